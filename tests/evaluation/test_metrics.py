"""The fast metrics against museval itself and against plain float64 loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bsmamba2.evaluation import metrics
from bsmamba2.evaluation.metrics import csdr, framewise_sdr, match_length, median_sdr, usdr, usdr_batch

museval = pytest.importorskip("museval")

RATE = 44100


def _museval_sdr(references: np.ndarray, estimates: np.ndarray, window: int, hop: int) -> np.ndarray:
    """museval's per-window SDR; arrays in our (sources, channels, samples) convention."""
    sdr, _, _, _ = museval.evaluate(
        np.moveaxis(references, -1, -2), np.moveaxis(estimates, -1, -2), win=window, hop=hop
    )
    return sdr


def _vocal_track(rng: np.random.Generator, rate: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Stereo vocals/accompaniment references and noisy estimates with museval's corner cases."""
    n = int(seconds * rate)
    vocals = rng.standard_normal((2, n)) * np.linspace(0.05, 0.4, n)
    vocals[:, int(0.5 * rate) : int(2.2 * rate)] = 0  # silent vocal passage (windows 1 NaN, 0 not)
    vocals[1, 3 * rate : 4 * rate] = -vocals[0, 3 * rate : 4 * rate]  # L = -R: museval calls it silent
    accompaniment = rng.standard_normal((2, n)) * 0.3
    references = np.stack([vocals, accompaniment]).astype(np.float32)
    estimates = references + rng.standard_normal(references.shape).astype(np.float32) * np.float32(0.1)
    estimates[:, :, int(0.3 * rate) : int(0.4 * rate)] *= 3  # uneven error over windows
    estimates[1, :, int(3.9 * rate) : int(5.05 * rate)] = 0  # estimate silent over a whole window
    return references, estimates


@pytest.fixture(scope="module")
def vocal_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """6.6 s at 44.1 kHz (the tail window incomplete), with museval's per-window SDR."""
    rng = np.random.default_rng(1234)
    references, estimates = _vocal_track(rng, RATE, 6.6)
    return references, estimates, _museval_sdr(references, estimates, RATE, RATE)


def test_framewise_sdr_equals_museval(vocal_case):
    references, estimates, expected = vocal_case
    ours = framewise_sdr(references, estimates)
    assert ours.shape == expected.shape == (2, 6)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected))
    assert np.isnan(expected[:, [1, 3, 4]]).all() and not np.isnan(expected[:, [0, 2, 5]]).any()
    finite = ~np.isnan(expected)
    np.testing.assert_allclose(ours[finite], expected[finite], rtol=0, atol=1e-6)


def test_csdr_equals_museval_median(vocal_case):
    references, estimates, expected = vocal_case
    ours = csdr(references, estimates)
    np.testing.assert_allclose(ours, np.nanmedian(expected, axis=1), rtol=0, atol=1e-6)
    # one source alone (channels, samples): its own silences only
    alone = csdr(references[1], estimates[1])
    reference_alone = np.nanmedian(_museval_single_sdr(references[1], estimates[1]))
    assert isinstance(alone, float)
    assert alone == pytest.approx(reference_alone, abs=1e-6)


def _museval_single_sdr(reference: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    return _museval_sdr(reference[None], estimate[None], RATE, RATE)[0]


@pytest.mark.parametrize("extra", [-30000, 25000])
def test_length_mismatch_like_museval(vocal_case, extra):
    references, estimates, _ = vocal_case
    references, estimates = references[:, :, : 3 * RATE], estimates[:, :, : 3 * RATE + extra]
    if extra > 0:
        estimates = estimates.copy()
        estimates[:, :, 3 * RATE :] = 1.0  # beyond the reference: must be ignored
    expected = _museval_sdr(references, estimates, RATE, RATE)
    ours = framewise_sdr(references, estimates)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected))
    np.testing.assert_allclose(ours[~np.isnan(ours)], expected[~np.isnan(expected)], atol=1e-6, rtol=0)
    assert match_length(references, estimates).shape == references.shape


def test_mono_four_stems_and_overlapping_windows_equal_museval():
    """Four mono sources (museval scores drums/bass/other/vocals jointly), hop < window."""
    rate = 8000
    rng = np.random.default_rng(7)
    references = rng.standard_normal((4, 1, int(4.3 * rate))).astype(np.float32)
    references[2, :, rate : 2 * rate] = 0
    estimates = references + 0.5 * rng.standard_normal(references.shape).astype(np.float32)
    estimates[0, :, 3 * rate :] = 0
    for window, hop in ((rate, rate), (rate, rate // 2)):
        expected = _museval_sdr(references, estimates, window, hop)
        ours = framewise_sdr(references, estimates, window, hop)
        assert ours.shape == expected.shape
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected))
        np.testing.assert_allclose(ours[~np.isnan(ours)], expected[~np.isnan(expected)], atol=1e-6, rtol=0)
        np.testing.assert_allclose(
            csdr(references, estimates, window, hop), np.nanmedian(expected, axis=1), atol=1e-6, rtol=0
        )


def test_shorter_than_a_window_is_one_window():
    rng = np.random.default_rng(3)
    references = rng.standard_normal((2, 2, 3000))
    estimates = references + rng.standard_normal(references.shape)
    expected = _museval_sdr(references, estimates, RATE, RATE)
    ours = framewise_sdr(references, estimates)
    assert ours.shape == expected.shape == (2, 1)
    np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)


def _loop_sdr(references: np.ndarray, estimates: np.ndarray, window: int, hop: int) -> np.ndarray:
    """The definition, window by window, in float64."""
    count = (references.shape[-1] - window + hop) // hop
    out = np.empty((references.shape[0], count))
    for t in range(count):
        span = slice(t * hop, t * hop + window)
        r, e = references[..., span].astype(np.float64), estimates[..., span].astype(np.float64)
        silent = any(not np.any(x.sum(axis=0)) for x in (*r, *e))
        for j in range(references.shape[0]):
            out[j, t] = np.nan if silent else 10 * np.log10(np.sum(r[j] ** 2) / np.sum((e[j] - r[j]) ** 2))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunked_windows_equal_the_definition(monkeypatch, dtype):
    """Windows spread over many processing chunks, with and without overlap."""
    monkeypatch.setattr(metrics, "_CHUNK_SAMPLES", 700)
    rng = np.random.default_rng(11)
    references = rng.standard_normal((3, 2, 5003)).astype(dtype)
    references[1, :, 1000:1450] = 0
    estimates = references + rng.standard_normal(references.shape).astype(dtype)
    for window, hop in ((200, 200), (300, 120)):
        expected = _loop_sdr(references, estimates, window, hop)
        ours = framewise_sdr(references, estimates, window, hop)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected))
        np.testing.assert_allclose(ours[~np.isnan(ours)], expected[~np.isnan(expected)], atol=1e-9, rtol=0)


def test_torch_input_gives_the_same_windows(vocal_case):
    references, estimates, _ = vocal_case
    ours = framewise_sdr(torch.from_numpy(references), torch.from_numpy(estimates))
    np.testing.assert_array_equal(ours, framewise_sdr(references, estimates))


def test_all_zero_estimate_is_nan_where_museval_raises():
    """museval refuses a silent estimate; we give NaN windows and a NaN cSDR, no exception."""
    rng = np.random.default_rng(5)
    references = rng.standard_normal((2, 2, 3 * 8000)).astype(np.float32)
    estimates = references + 0.1 * rng.standard_normal(references.shape).astype(np.float32)
    estimates[0] = 0
    with pytest.raises(ValueError, match="silent"):
        _museval_sdr(references, estimates, 8000, 8000)
    assert np.isnan(framewise_sdr(references, estimates, 8000, 8000)).all()
    assert np.isnan(csdr(references, estimates, 8000, 8000)).all()
    assert usdr(references[0], estimates[0]) == pytest.approx(0.0, abs=1e-6)


def test_error_free_window_is_inf_and_left_out_of_the_median():
    rng = np.random.default_rng(9)
    reference = rng.standard_normal((1, 400))
    estimate = reference + rng.standard_normal((1, 400))
    estimate[:, 100:200] = reference[:, 100:200]
    sdr = framewise_sdr(reference, estimate, 100, 100)
    assert sdr[1] == math.inf and np.isfinite(sdr[[0, 2, 3]]).all()
    assert csdr(reference, estimate, 100, 100) == pytest.approx(np.median(sdr[[0, 2, 3]]))


def test_error_free_windows_in_museval_are_finite_unless_the_whole_track_is():
    """What the docstring says museval does: ~400 dB where one window is identical (its
    projection on the sources leaves rounding), +inf only for an identical track; ours is
    +inf in both."""
    rng = np.random.default_rng(4)
    reference = rng.standard_normal((2, 2, 2 * RATE)) * 0.1  # two sources, as museval projects
    estimate = reference + rng.standard_normal((2, 2, 2 * RATE)) * 0.01
    estimate[..., :RATE] = reference[..., :RATE]
    theirs = _museval_sdr(reference, estimate, RATE, RATE)[0]
    assert 300 < theirs[0] < 500 and np.isfinite(theirs).all()
    assert framewise_sdr(reference, estimate)[0, 0] == math.inf
    assert (_museval_sdr(reference, reference.copy(), RATE, RATE) == math.inf).all()
    assert (framewise_sdr(reference, reference.copy()) == math.inf).all()


def test_median_sdr():
    values = np.array([[1.0, np.nan, 3.0, np.inf, 2.0], [np.nan] * 5])
    out = median_sdr(values)
    assert out[0] == 2.0 and np.isnan(out[1])


def test_usdr_hand_computed():
    reference = np.array([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]])
    estimate = np.array([[1.0, -1.0, 2.0], [0.0, 0.5, -1.0]])
    # signal 1 + 4 + 9 + 0.25 + 0 + 1 = 15.25; error 0 + 1 + 1 + 0.25 + 0.25 + 0 = 2.5
    expected = 10 * math.log10((15.25 + 1e-7) / (2.5 + 1e-7))
    assert usdr(reference, estimate) == pytest.approx(expected, abs=1e-12)
    assert usdr(reference, estimate[:, :2]) == pytest.approx(  # zero-padded like museval
        10 * math.log10((15.25 + 1e-7) / (0 + 1 + 0.25 + 0.25 + 9 + 1 + 1e-7)), abs=1e-12
    )


def _usdr_loop(reference: np.ndarray, estimate: np.ndarray) -> float:
    signal = sum(float(v) ** 2 for v in reference.ravel())
    error = sum((float(a) - float(b)) ** 2 for a, b in zip(reference.ravel(), estimate.ravel(), strict=True))
    return 10 * math.log10((signal + 1e-7) / (error + 1e-7))


def test_usdr_batch_torch_matches_per_item_float64():
    rng = np.random.default_rng(2)
    reference = rng.standard_normal((3, 2, 2000)).astype(np.float32)
    estimate = (
        reference
        + rng.standard_normal(reference.shape).astype(np.float32)
        * np.array([0.1, 1.0, 3.0], dtype=np.float32)[:, None, None]
    )
    out = usdr_batch(torch.from_numpy(reference), torch.from_numpy(estimate))
    assert isinstance(out, torch.Tensor) and out.shape == (3,) and out.dtype == torch.float64
    expected = [_usdr_loop(r, e) for r, e in zip(reference, estimate, strict=True)]
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(usdr_batch(reference, estimate), expected, rtol=0, atol=1e-9)


def test_torch_sums_equal_numpy_sums():
    """The GPU implementation (torch), run on the CPU, against the CPU one (numpy)."""
    rng = np.random.default_rng(4)
    r = rng.standard_normal((3, 2, 4000)).astype(np.float32)
    r[0, 1, 1000:2000] = -r[0, 0, 1000:2000]
    e = r + rng.standard_normal(r.shape).astype(np.float32)
    e[2, :, 3000:] = 0
    tr, te = torch.from_numpy(r), torch.from_numpy(e)
    for window, hop in ((1000, 1000), (1500, 500)):
        ours = metrics._window_sums_torch(tr, te, window, hop)
        want = metrics._window_sums_numpy(r, e, window, hop)
        for a, b in zip(ours, want, strict=True):
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-12)
        if hop == window:
            assert want[2].tolist() == [False, True, False, True]
    for a, b in zip(metrics._total_sums_torch(tr, te), metrics._total_sums_numpy(r, e), strict=True):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_gpu(vocal_case):
    references, estimates, _ = vocal_case
    gpu = framewise_sdr(torch.from_numpy(references).cuda(), torch.from_numpy(estimates).cuda())
    np.testing.assert_allclose(gpu, framewise_sdr(references, estimates), atol=1e-9, equal_nan=True)
    batch = usdr_batch(torch.from_numpy(references).cuda(), torch.from_numpy(estimates).cuda())
    assert batch.device.type == "cuda"
    np.testing.assert_allclose(batch.cpu().numpy(), usdr_batch(references, estimates), atol=1e-9)


def test_shape_errors():
    with pytest.raises(ValueError, match="channels"):
        framewise_sdr(np.ones((2, 2, 100)), np.ones((2, 1, 100)))
    with pytest.raises(ValueError, match=r"\(channels, samples\)"):
        usdr(np.ones((2, 2, 100)), np.ones((2, 2, 100)))
