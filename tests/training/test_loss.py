"""The training loss (spec §3) against a direct float64 numpy computation of its formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bsmamba2.training.loss import HOP, WINDOWS, MultiResolutionLoss


def _stft_direct(x: np.ndarray, win: int, n_fft: int, hop: int) -> np.ndarray:
    """Centred (reflect-padded) frames × periodic Hann of length ``win`` centred in ``n_fft``, rfft."""
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left : left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)], mode="reflect")
    n_frames = 1 + (padded.shape[-1] - n_fft) // hop
    frames = np.stack([padded[..., t * hop : t * hop + n_fft] for t in range(n_frames)], axis=-2)
    return np.fft.rfft(frames * window, axis=-1)


def _loss_direct(est: np.ndarray, ref: np.ndarray) -> float:
    loss = 10 * np.mean(np.abs(est - ref))
    for w in WINDOWS:
        n_fft = max(w, 2048)
        loss += np.mean(np.abs(_stft_direct(est, w, n_fft, HOP) - _stft_direct(ref, w, n_fft, HOP)))
    return float(loss)


@pytest.mark.parametrize("shape", [(2, 1, 2, 6000), (1, 2, 2, 4410)])
def test_loss_matches_formula(shape):
    est, ref = torch.randn(shape), torch.randn(shape)
    expected = _loss_direct(est.double().numpy(), ref.double().numpy())
    got = MultiResolutionLoss()(est, ref)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # float64 inputs are computed in float32 too (the loss is always fp32), still within fp32 error
    assert MultiResolutionLoss()(est.double(), ref.double()).item() == pytest.approx(expected, rel=1e-5)


def test_loss_gradient_matches_formula():
    """d loss / d estimate against central finite differences of the direct formula."""
    est, ref = torch.randn(1, 1, 1, 4500), torch.randn(1, 1, 1, 4500)
    est.requires_grad_(True)
    MultiResolutionLoss()(est, ref).backward()
    e, r = est.detach().double().numpy(), ref.double().numpy()
    for i in torch.randint(0, 4500, (4,)).tolist():
        h = 1e-4
        plus, minus = e.copy(), e.copy()
        plus[..., i] += h
        minus[..., i] -= h
        numeric = (_loss_direct(plus, r) - _loss_direct(minus, r)) / (2 * h)
        assert est.grad[0, 0, 0, i].item() == pytest.approx(numeric, rel=1e-3, abs=1e-7)


def test_loss_is_zero_only_for_equal_signals_and_checks_shapes():
    x = torch.randn(1, 1, 2, 5000)
    loss = MultiResolutionLoss()
    assert loss(x, x).item() == 0.0
    assert loss(x + 1e-3 * torch.randn_like(x), x).item() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        loss(x, x[..., :-1])


def test_loss_under_autocast_stays_float32():
    x, y = torch.randn(1, 1, 2, 5000), torch.randn(1, 1, 2, 5000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = MultiResolutionLoss()(x.bfloat16(), y.bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(
        MultiResolutionLoss()(x.bfloat16().float(), y.bfloat16().float()).item(), rel=1e-6
    )
