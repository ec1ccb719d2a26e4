"""Pathological chunking options (issue 13 item 5): a one-line error naming the parameter, or
a clamp with a warning; never work that grows with padding the input does not need."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bsmamba2 import Separator
from bsmamba2.errors import ParameterError
from bsmamba2.separation.chunking import Chunking
from tests.helpers.configs import MICRO


class CountingMask(nn.Module):
    """Mask one, counting the segments it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.config = MICRO
        self.segments = 0

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        self.segments += spec.shape[0]
        return spec.unsqueeze(1)


def _separator(**kwargs) -> Separator:
    return Separator(CountingMask(), device="cpu", progress=False, **kwargs)


def test_a_short_input_needs_one_or_two_segments_whatever_the_overlap():
    """Padding by the whole overlap cut 100 samples into 99 segments of 8 s at 0.99 (~1000 at
    0.999); at most one hop of padding each side leaves one or two."""
    for overlap, segments in {0.0: 1, 0.25: 1, 0.5: 2, 0.9: 1, 0.99: 1}.items():
        sep = _separator(overlap=overlap)
        x = np.random.randn(2, 100).astype(np.float32)
        out = sep.separate(x, 44100)
        assert sep.model.segments == segments, overlap
        np.testing.assert_allclose(out["vocals"], x, atol=1e-5)


@pytest.mark.parametrize("overlap", [0.5, 0.75, 0.9])
def test_segment_count_grows_with_the_input_not_the_padding(overlap):
    plan = Chunking.from_seconds(8.0, overlap, 44100, 2048)
    for samples in (1, 44100, 10 * 44100, 60 * 44100):
        back_to_back = -(-samples // plan.hop)
        assert plan.segments_for(samples) <= back_to_back + 2, (overlap, samples)
    assert plan.pad == min(plan.segment - plan.hop, plan.hop)


@pytest.mark.parametrize(
    ("kwargs", "parameter", "words"),
    [
        ({"overlap": 0.999}, "overlap", "use an overlap of at most 0.994"),
        ({"overlap": float("nan")}, "overlap", "overlap must be in [0, 1)"),
        ({"segment": float("inf")}, "segment", "segment must be longer than"),
        ({"segment": float("nan")}, "segment", "segment must be longer than"),
        ({"segment": 1e7}, "segment", "GiB per model call (estimate), more than the"),
        ({"batch_size": -3}, "batch_size", "batch size must be auto or at least 1"),
    ],
)
def test_pathological_options_are_errors_naming_the_parameter(kwargs, parameter, words):
    with pytest.raises(ParameterError) as info:
        _separator(**kwargs)
    assert info.value.parameter == parameter and words in str(info.value) and "\n" not in str(info.value)


def test_a_batch_beyond_all_memory_is_clamped_with_a_warning():
    with pytest.warns(UserWarning, match=r"batch size 1000000000: .* more than the .* GiB of memory on cpu: using"):
        sep = _separator(segment=60.0, batch_size=10**9)
    assert 1 <= sep.batch_size < 10**9
    assert _separator(batch_size=64).batch_size == 64  # what fits stays as asked


def test_official_with_chunking_options_is_an_error():
    for kwargs in ({"segment": 4.0}, {"overlap": 0.5}):
        with pytest.raises(ParameterError, match="official=True fixes 8 s segments") as info:
            _separator(official=True, **kwargs)
        assert info.value.parameter == "official"
    assert (_separator(official=True).hop_samples, _separator(official=True).pad_samples) == (352800, 0)
