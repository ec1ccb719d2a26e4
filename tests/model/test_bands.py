"""The band split and mask estimators run bands of equal width as one batched product: the
same function and gradients as applying each band's own modules one by one (the official
way, written out here as the reference)."""

from __future__ import annotations

import pytest
import torch

from bsmamba2.model.bands import BandSplit, MaskEstimator, band_widths, equal_width_runs
from tests.helpers.numerics import rel_err


def per_band_split(split: BandSplit, x: torch.Tensor) -> torch.Tensor:
    parts = x.split(split.widths, dim=-1)
    return torch.stack([f(p) for f, p in zip(split.to_features, parts, strict=True)], dim=-2)


def per_band_masks(estimator: MaskEstimator, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([f(x[..., k, :]) for k, f in enumerate(estimator.to_freqs)], dim=-1)


def randomise(module: torch.nn.Module) -> None:
    """Every parameter away from its init (norm gains of one would hide a wrong gain)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.ndim == 1 else 0.0))


def test_equal_width_runs():
    assert equal_width_runs([8, 8, 16, 16, 16, 8, 4]) == [range(0, 2), range(2, 5), range(5, 6), range(6, 7)]
    assert equal_width_runs([5]) == [range(0, 1)]
    paper = band_widths((2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129), 2)
    assert [len(r) for r in equal_width_runs(paper)] == [24, 12, 8, 8, 8, 1, 1]


# equal widths apart from each other and runs of one: every case of the grouping
BANDS = (2, 2, 3, 1, 1, 1, 2, 4)


@pytest.mark.parametrize("lead", [(2, 7), (1, 1)])
def test_band_split_equals_per_band_float64(lead):
    torch.manual_seed(0)
    widths = band_widths(BANDS, 2)
    split = BandSplit(12, widths).double()
    randomise(split)
    x = torch.randn(*lead, sum(widths), dtype=torch.float64, requires_grad=True)
    out = split(x)
    ref = per_band_split(split, x)
    assert out.shape == (*lead, len(BANDS), 12)
    assert rel_err(out, ref) <= 1e-13
    dy = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [x, *split.parameters()], dy)
    ref_grads = torch.autograd.grad(ref, [x, *split.parameters()], dy)
    for g, r in zip(grads, ref_grads, strict=True):
        assert rel_err(g, r) <= 1e-13


@pytest.mark.parametrize("lead", [(2, 7), (1, 1)])
def test_mask_estimator_equals_per_band_float64(lead):
    torch.manual_seed(1)
    widths = band_widths(BANDS, 2)
    estimator = MaskEstimator(12, widths, expansion=2).double()
    randomise(estimator)
    x = torch.randn(*lead, len(BANDS), 12, dtype=torch.float64, requires_grad=True)
    out = estimator(x)
    ref = per_band_masks(estimator, x)
    assert out.shape == (*lead, sum(widths))
    assert rel_err(out, ref) <= 1e-13
    dy = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [x, *estimator.parameters()], dy)
    ref_grads = torch.autograd.grad(ref, [x, *estimator.parameters()], dy)
    for g, r in zip(grads, ref_grads, strict=True):
        assert rel_err(g, r) <= 1e-13


def test_grouped_bands_under_bf16_autocast_close_to_float32():
    """Under autocast the batched products run in bf16 as each band's linear would."""
    torch.manual_seed(2)
    widths = band_widths(BANDS, 2)
    split, estimator = BandSplit(16, widths), MaskEstimator(16, widths, expansion=2)
    randomise(split)
    randomise(estimator)
    x = torch.randn(3, 5, sum(widths))
    with torch.no_grad():
        ref = per_band_masks(estimator, per_band_split(split, x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = estimator(split(x))
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) <= 3e-2
