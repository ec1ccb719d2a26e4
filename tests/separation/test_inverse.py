"""The separator's inverse STFT without a host synchronisation (separation/inverse.py): the
same bits as torch.istft's (bsmamba2.model.istft) for every output length, exact inversion of
the STFT in float64, the envelope checked once per shape; on CUDA, a whole submit of the
engine runs without a synchronisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bsmamba2 import BSMamba2
from bsmamba2.errors import BSMamba2Error
from bsmamba2.model import BSMamba2Config, istft, stft
from bsmamba2.separation import inverse
from bsmamba2.separation.engine import SegmentModel
from tests.helpers.configs import MICRO

PAPER = BSMamba2Config()


def _spec(frames: int, batch: tuple[int, ...], dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(frames)
    real = torch.randn(*batch, PAPER.n_fft // 2 + 1, frames, 2, generator=g, dtype=dtype.to_real())
    return torch.view_as_complex(real).to(device)


def test_a_length_past_the_last_frame_is_an_error_as_in_torch():
    spec = _spec(3, (2,), torch.complex64)
    with pytest.raises(RuntimeError, match="window overlap add min"):
        istft(spec, PAPER, length=5000)
    with pytest.raises(BSMamba2Error, match=r"^inverse STFT: the window's overlap-add is zero somewhere \(3 frames\)$"):
        inverse.istft(spec, PAPER, length=5000)


@pytest.mark.parametrize("frames, length", [(41, 441 * 40), (41, 441 * 40 - 123), (41, 441 * 40 + 1000), (2, 441)])
def test_the_same_bits_as_torch_istft(frames, length):
    spec = _spec(frames, (2, 3), torch.complex64)
    want = istft(spec, PAPER, length=length)
    got = inverse.istft(spec, PAPER, length=length)
    assert got.shape == want.shape == (2, 3, length) and got.dtype == want.dtype
    assert torch.equal(got, want)


def test_it_inverts_the_stft_in_float64():
    x = torch.randn(2, 2, 30000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    back = inverse.istft(stft(x, PAPER), PAPER, length=x.shape[-1])
    torch.testing.assert_close(back, x, rtol=0, atol=1e-12)


def test_the_envelope_is_made_and_checked_once_per_shape(monkeypatch):
    made = []
    original = torch.ops.aten.unfold_backward

    class Counting:
        def __call__(self, grad, sizes, dim, size, step):
            made.append(sizes[0])
            return original(grad, sizes, dim, size, step)

    monkeypatch.setattr(inverse, "_ENVELOPES", {})
    monkeypatch.setattr(inverse.torch.ops.aten, "unfold_backward", Counting())
    spec = _spec(17, (2,), torch.complex64)
    for _ in range(3):
        inverse.istft(spec, PAPER, length=441 * 16)
    inverse.istft(spec, PAPER, length=441 * 16 - 7)
    assert made.count(1) == 2 and made.count(2) == 4  # envelopes (one row) for two lengths; every call's audio


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_same_bits_and_a_submit_without_synchronisation():
    spec = _spec(41, (2, 3), torch.complex64, "cuda")
    assert torch.equal(inverse.istft(spec, PAPER, length=441 * 40 - 5), istft(spec, PAPER, length=441 * 40 - 5))
    torch.manual_seed(0)
    run = SegmentModel(BSMamba2(MICRO).cuda().eval(), torch.device("cuda"), "bf16")
    rng = np.random.default_rng(3)
    batches = [[rng.standard_normal((2, 22050)).astype(np.float32) * 0.3 for _ in range(2)] for _ in range(4)]
    for batch in batches[:3]:  # the first eager, the second recorded as a graph, the envelope kept
        run(batch)
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = run.submit(batches[3])  # a synchronising op here raises
    finally:
        torch.cuda.set_sync_debug_mode("default")
    np.testing.assert_array_equal(results.result(), SegmentModel(run.model, run.device, "bf16", cuda_graphs=False)(
        batches[3]))
