"""Source activity detection (spec §4) on a hand-computed example and against a literal loop."""

from __future__ import annotations

import numpy as np
import pytest

from bsmamba2.data.sad import salient_windows

CHUNK = 20  # window 200 samples = 10 chunks of 20, hop 100 = 5 chunks


def _signal(amplitudes: np.ndarray, tail: int = 0) -> np.ndarray:
    """(channels, chunks) RMS values → ±a square waves (a chunk's RMS is exactly a)."""
    signs = np.where(np.arange(CHUNK) % 2, 1.0, -1.0)
    audio = (amplitudes[:, :, None] * signs).reshape(amplitudes.shape[0], -1)
    return np.pad(audio, ((0, 0), (0, tail))).astype(np.float32)


def test_hand_computed_example():
    rng = np.random.default_rng(0)
    a = np.zeros((2, 50))
    a[:, 0:10] = rng.uniform(0.2, 0.8, (2, 10))  # window 0 (chunks 0-9): active → kept
    # chunks 10-19 silent: window 1 (5-14) half active → dropped; window 2 (10-19) silent → dropped
    a[:, 20:30] = rng.uniform(0.2, 0.8, (2, 10))  # window 3 (15-24) half → dropped; window 4 (20-29) kept
    a[0, 30:40] = rng.uniform(0.2, 0.8, 10)  # channel 1 silent: windows 5 (25-34), 6 (30-39) dropped
    a[:, 44:50] = rng.uniform(0.2, 0.8, (2, 6))  # window 7 (35-44): 1 active chunk in channel 1 → dropped
    # window 8 (40-49): 6 of 10 chunks active in both channels → kept (more than half)
    audio = _signal(a, tail=10)  # 1010 samples: 9 full windows, the partial 10th is dropped
    assert salient_windows(audio, window=200) == [0, 400, 800]


def test_threshold_is_relative_to_the_window():
    """The 15 % quantile makes the threshold relative: 5 quiet chunks (still > 1e-3) are not 'active'."""
    loud = np.linspace(0.5, 0.9, 10)
    three_quiet = loud.copy()
    three_quiet[[1, 4, 7]] = 0.01  # quantile ≈ 0.01, 7 chunks above it → kept
    five_quiet = loud.copy()
    five_quiet[[0, 2, 4, 6, 8]] = 0.01  # quantile = 0.01, only 5 above → dropped
    below_floor = np.full(10, 5e-4)
    below_floor[[0, 1, 2]] = 4e-4  # above the quantile but below the 1e-3 floor → dropped
    for amps, kept in [(loud, True), (three_quiet, True), (five_quiet, False), (below_floor, False)]:
        audio = _signal(np.stack([amps, amps[::-1]]))
        assert salient_windows(audio, window=200) == ([0] if kept else []), amps


def _literal(audio: np.ndarray, window: int) -> list[int]:
    """The rule of spec §4 as a plain loop over windows, chunks and channels."""
    chunk, kept = window // 10, []
    for start in range(0, audio.shape[1] - window + 1, window // 2):
        ok = True
        for ch in range(audio.shape[0]):
            rms = [
                np.sqrt(
                    np.mean(audio[ch, start + k * chunk : start + (k + 1) * chunk].astype(np.float64) ** 2)
                )
                for k in range(10)
            ]
            rms = [r if r != 0 else 1e-5 for r in rms]
            threshold = max(np.quantile(rms, 0.15), 1e-3)
            ok &= sum(r > threshold for r in rms) > 5
        if ok:
            kept.append(start)
    return kept


@pytest.mark.parametrize("seconds", [40.3, 8.0, 7.9])
def test_matches_literal_rule_at_8_seconds(seconds):
    rng = np.random.default_rng(1)
    n = int(seconds * 44100)
    gate = np.repeat(rng.random((2, n // 70560 + 1)) < 0.6, 70560, axis=1)[:, :n]  # 1.6 s on/off
    audio = (rng.standard_normal((2, n)) * 0.05 * gate).astype(np.float32)
    got = salient_windows(audio)
    assert got == _literal(audio, 352800)
    if seconds > 8:
        assert 0 < len(got) < (n - 352800) // 176400 + 1  # some kept, some dropped


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of 20"):
        salient_windows(np.ones((2, 1000)), window=210)
    with pytest.raises(ValueError, match="channels, samples"):
        salient_windows(np.ones(1000), window=200)
