"""bleedless / fullness against a direct float64 computation of ZFTurbo's definition (a DFT
of each Hann-windowed frame, the Slaney mel filterbank from its formula), and on cases whose
answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from bsmamba2.evaluation.bleed import HOP, N_FFT, N_MELS, TOP_DB, bleedless_fullness, mel_db

RATE = 44100


def _slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    log_step = np.log(6.4) / 27
    return np.where(hz < 1000, 3 * hz / 200, 15 + np.log(np.maximum(hz, 1e-9) / 1000) / log_step)


def _slaney_hz(mel: np.ndarray) -> np.ndarray:
    log_step = np.log(6.4) / 27
    return np.where(mel < 15, 200 * mel / 3, 1000 * np.exp(log_step * (mel - 15)))


def _filterbank(rate: int) -> np.ndarray:
    """Triangles between mel-spaced edges, each scaled to unit area (2 / its width in Hz)."""
    edges = _slaney_hz(np.linspace(_slaney_mel(np.array(0.0)), _slaney_mel(np.array(rate / 2)), N_MELS + 2))
    bins = np.arange(N_FFT // 2 + 1) * rate / N_FFT
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (bins - low) / (centre - low), (high - bins) / (high - centre)
    return np.maximum(0, np.minimum(rising, falling)) * 2 / (high - low)


def _mel_db_by_definition(audio: np.ndarray, rate: int) -> np.ndarray:
    padded = np.pad(audio.astype(np.float64), ((0, 0), (N_FFT // 2, N_FFT // 2)))
    frames = 1 + audio.shape[1] // HOP
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    starts = np.arange(frames) * HOP
    framed = np.stack([padded[:, s : s + N_FFT] * window for s in starts], axis=-1)  # (C, N_FFT, T)
    magnitude = np.abs(np.fft.rfft(framed, axis=1))
    db = 20 * np.log10(np.maximum(np.einsum("mk,ckt->cmt", _filterbank(rate), magnitude), 1e-10))
    return np.maximum(db, db.max() - TOP_DB)


def _by_definition(reference: np.ndarray, estimate: np.ndarray, rate: int) -> tuple[float, float]:
    d = _mel_db_by_definition(estimate, rate) - _mel_db_by_definition(reference, rate)
    return 100 / (1 + d[d > 0].mean()), 100 / (1 - d[d < 0].mean())


@pytest.mark.parametrize("rate", [44100, 22050])
def test_equals_the_definition(rate):
    rng = np.random.default_rng(1)
    t = np.arange(int(0.7 * rate)) / rate
    reference = (0.3 * np.sin(2 * np.pi * 440 * t) * np.ones((2, 1)) + 0.05 * rng.standard_normal((2, t.size)))
    estimate = 0.8 * reference + 0.02 * rng.standard_normal(reference.shape)
    reference, estimate = reference.astype(np.float32), estimate.astype(np.float32)
    ours = mel_db(reference, rate)
    assert ours.shape == (2, N_MELS, 1 + t.size // HOP)
    np.testing.assert_allclose(ours, _mel_db_by_definition(reference, rate), atol=2e-3)
    np.testing.assert_allclose(bleedless_fullness(reference, estimate, rate), _by_definition(reference, estimate, rate), rtol=1e-4)


def test_known_answers():
    rng = np.random.default_rng(2)
    reference = (0.1 * rng.standard_normal((2, RATE))).astype(np.float32)
    assert bleedless_fullness(reference, reference, RATE) == (100.0, 100.0)
    # half the level everywhere: every d is -6.02 dB (the 80 dB floors move with the peaks)
    bleedless, fullness = bleedless_fullness(reference, reference / 2, RATE)
    assert bleedless == 100.0 and fullness == pytest.approx(100 / (1 + 20 * np.log10(2)), rel=1e-5)
    bleedless, fullness = bleedless_fullness(reference, reference * 2, RATE)
    assert fullness == 100.0 and bleedless == pytest.approx(100 / (1 + 20 * np.log10(2)), rel=1e-5)
    other = (0.1 * rng.standard_normal((2, RATE))).astype(np.float32)
    loud, quiet = (bleedless_fullness(reference, reference + gain * other, RATE)[0] for gain in (1.0, 0.1))
    assert loud < quiet < 100  # more bleed, less bleedless
