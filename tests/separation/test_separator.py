"""The Separator: exact reconstruction through the chunking, official protocol parity, the
null test, rates, channels, precision, batching, file output."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from bsmamba2 import BSMamba2, BSMamba2Config, Separator, load_model
from bsmamba2 import device as device_module
from bsmamba2.audio import AudioError, read_audio
from bsmamba2.device import auto_device, fft_device, resolve_device, resolve_precision
from bsmamba2.errors import BSMamba2Error
from bsmamba2.model import istft, stft
from bsmamba2.separation import ClippingWarning
from bsmamba2.separation.batching import MAX_AUTO_BATCH, auto_batch_size, segment_bytes
from tests.helpers.configs import MICRO
from tests.helpers.extras import needs_extra
from tests.helpers.models import MaskModel


class SegmentLevelModel(MaskModel):
    """A mask that depends on the whole segment (its mean magnitude): any mistake in where
    segments start, end or are padded changes the output."""

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return (spec * (0.5 + spec.abs().mean(dim=(-2, -1), keepdim=True))).unsqueeze(1)


def band_limited(channels: int, seconds: float, rate: int) -> np.ndarray:
    """Random tones below 0.3·rate with smooth ends: survives resampling to 44.1 kHz and back."""
    n = int(seconds * rate) + 13  # not a multiple of any hop
    t = np.arange(n) / rate
    rng = np.random.default_rng(int(seconds * 1000) + rate + channels)
    x = np.stack(
        [
            sum(
                rng.uniform(0.02, 0.1)
                * np.sin(2 * np.pi * rng.uniform(40, 0.3 * rate) * t + rng.uniform(0, 6))
                for _ in range(12)
            )
            for _ in range(channels)
        ]
    )
    fade = np.clip(np.minimum(t, t[::-1]) / 0.05, 0, 1)
    return (x * (0.5 - 0.5 * np.cos(np.pi * fade))).astype(np.float32)


SETTINGS = [(1.0, 0.25), (0.5, 0.0), (0.7, 0.6), (8.0, 0.25), (0.3, 0.5)]
CASES = [(rate, channels, 0.4, 0.25) for rate in (22050, 44100, 48000) for channels in (1, 2)]
CASES += [(44100, 2, segment, overlap) for segment, overlap in SETTINGS]
CASES += [(48000, 1, 8.0, 0.25), (22050, 2, 0.3, 0.5)]


@pytest.mark.parametrize(("rate", "channels", "segment", "overlap"), CASES)
def test_unit_mask_reconstructs_input(rate, channels, segment, overlap):
    """Shorter than a segment (8 s) and longer than several (0.3 s), any hop: no seams, no level change."""
    x = band_limited(channels, 1.3, rate)
    audio = x[0] if channels == 1 else x
    sep = Separator(MaskModel(), device="cpu", segment=segment, overlap=overlap, batch_size=2, progress=False)
    out = sep.separate(audio, rate)
    assert set(out) == {"vocals", "accompaniment"}
    for stem in out.values():
        assert stem.shape == audio.shape and stem.dtype == np.float32
    assert np.abs(out["vocals"] - audio).max() < 1e-5
    assert np.abs(out["accompaniment"]).max() < 1e-5


def hard_edged(channels: int, seconds: float, rate: int) -> np.ndarray:
    """Random tones below 60 % of the lower Nyquist frequency (the input's or 22.05 kHz),
    starting and stopping at full level: any ringing of the resampler at the cuts shows."""
    n = int(seconds * rate) + 13
    t = np.arange(n) / rate
    rng = np.random.default_rng(rate + channels)
    top = 0.6 * min(rate, 44100) / 2
    tones = [
        sum(rng.uniform(0.02, 0.1) * np.sin(2 * np.pi * rng.uniform(40, top) * t + rng.uniform(0, 6)) for _ in range(12))
        for _ in range(channels)
    ]
    return np.stack(tones).astype(np.float32)


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 32000, 48000, 88200, 96000])
def test_unit_mask_is_exact_at_the_ends_after_resampling(rate):
    """Through 44.1 kHz and back: the first and last 10 ms as exact as the middle (the cut
    ends used to ring by up to 2e-2)."""
    x = hard_edged(2, 0.7, rate)
    sep = Separator(MaskModel(), device="cpu", segment=0.4, overlap=0.25, batch_size=2, progress=False)
    vocals = sep.separate(x, rate)["vocals"]
    assert vocals.shape == x.shape
    error = np.abs(vocals - x).max(axis=0)
    edge = int(0.01 * rate)
    assert np.abs(x[:, 0]).max() > 0.01 and np.abs(x[:, -1]).max() > 0.01  # the cuts are hard
    assert error[edge:-edge].max() < 3e-5
    assert error[:edge].max() < 3e-5 and error[-edge:].max() < 3e-5


@pytest.mark.parametrize("channels", [1, 2])
def test_mono_model_reconstructs(channels):
    x = np.random.randn(channels, 30011).astype(np.float32) * 0.3
    sep = Separator(MaskModel(stereo=False), device="cpu", segment=0.25, overlap=0.25, progress=False)
    out = sep.separate(torch.from_numpy(x), 44100)
    assert np.abs(out["vocals"] - x).max() < 1e-5


def test_official_protocol_is_back_to_back_zero_padded_segments():
    x = np.random.randn(2, int(44100 * 17.5)).astype(np.float32) * 0.2
    model = SegmentLevelModel()
    sep = Separator.official(model, device="cpu", progress=False)
    assert (sep.segment_samples, sep.hop_samples, sep.pad_samples) == (352800, 352800, 0)
    out = sep.separate(x, 44100)["vocals"]
    segment = 8 * 44100
    padded = np.zeros((2, 3 * segment), np.float32)
    padded[:, : x.shape[1]] = x
    with torch.inference_mode():
        chunks = torch.from_numpy(padded).reshape(2, 3, segment).transpose(0, 1)
        by_hand = istft(model(stft(chunks, model.config))[:, 0], model.config)
    by_hand = by_hand.transpose(0, 1).reshape(2, -1)[:, : x.shape[1]].numpy()
    np.testing.assert_allclose(out, by_hand, atol=1e-6)
    overlapped = Separator(model, device="cpu", segment=8.0, overlap=0.25, progress=False).separate(x, 44100)
    assert np.abs(overlapped["vocals"] - by_hand).max() > 1e-3  # the test can tell the protocols apart


@pytest.mark.slow
def test_golden_checkpoint_official_equals_chunking_by_hand(data_dir):
    """The real tiny official checkpoint: one zero-padded 8 s segment, as the official code does."""
    x, rate = sf.read(data_dir / "input.wav", dtype="float32")
    x = x.T
    sep = Separator(data_dir / "tiny.ckpt", device="cpu", official=True, progress=False)
    out = sep.separate(x, rate)
    model = load_model(data_dir / "tiny.ckpt")
    padded = np.zeros((2, 8 * 44100), np.float32)
    padded[:, : x.shape[1]] = x
    with torch.inference_mode():
        spec = stft(torch.from_numpy(padded), model.config)[None]
        by_hand = istft(model(spec)[0, 0], model.config)[:, : x.shape[1]].numpy()
    np.testing.assert_allclose(out["vocals"], by_hand, atol=2e-6)
    assert np.abs(by_hand).max() > 1e-2
    np.testing.assert_array_equal(out["accompaniment"], x - out["vocals"])


def test_golden_checkpoint_matches_the_official_output(data_dir, expected):
    """input.wav is exactly 2 s: one 2 s segment, no padding, must give the official code's output."""
    x, rate = sf.read(data_dir / "input.wav", dtype="float32")
    sep = Separator(data_dir / "tiny.ckpt", device="cpu", segment=2.0, overlap=0.0, progress=False)
    out = sep.separate(x.T, rate)["vocals"]
    golden = expected["wav_out"].reshape(out.shape)
    np.testing.assert_allclose(out, golden, atol=1e-5 * np.abs(golden).max())


@pytest.fixture(scope="module")
def micro_model():
    torch.manual_seed(7)
    return BSMamba2(MICRO).eval()


def test_null_test_is_exact_in_float(micro_model):
    x = np.random.randn(2, int(48000 * 1.2)).astype(np.float32) * 0.4
    out = Separator(micro_model, device="cpu", segment=0.6, progress=False).separate(x, 48000)
    vocals, accompaniment = out["vocals"], out["accompaniment"]
    assert np.abs(vocals).max() > 1e-3 and np.abs(vocals - x).max() > 1e-3  # a real separation
    np.testing.assert_array_equal(accompaniment, x - vocals)  # no rescaling anywhere
    residual = np.abs((vocals + accompaniment) - x)
    assert residual.max() <= np.finfo(np.float32).eps * np.maximum(np.abs(x), np.abs(vocals)).max()


def test_batch_size_and_block_layout_do_not_change_the_result(micro_model, tmp_path):
    x = np.random.randn(2, 50000).astype(np.float32) * 0.3
    one = Separator(micro_model, device="cpu", segment=0.5, batch_size=1, progress=False).separate(x, 44100)
    three = Separator(micro_model, device="cpu", segment=0.5, batch_size=3, progress=False).separate(x, 44100)
    np.testing.assert_allclose(three["vocals"], one["vocals"], atol=1e-5)
    sf.write(tmp_path / "x.wav", x.T, 44100, subtype="FLOAT")
    sep = Separator(micro_model, device="cpu", segment=0.5, batch_size=2, progress=False)
    paths = sep.separate_file(tmp_path / "x.wav", tmp_path / "out")
    np.testing.assert_allclose(read_audio(paths["vocals"])[0], one["vocals"], atol=1e-5)
    np.testing.assert_array_equal(read_audio(paths["accompaniment"])[0], x - read_audio(paths["vocals"])[0])


class OutOfMemoryAbove(SegmentLevelModel):
    """Raises CUDA's out-of-memory error for batches larger than ``limit`` segments."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if spec.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(spec)


def test_out_of_memory_halves_the_batch_and_changes_nothing():
    x = np.random.default_rng(3).standard_normal((2, 80000)).astype(np.float32) * 0.3
    want = Separator(SegmentLevelModel(), device="cpu", segment=0.3, batch_size=1, progress=False).separate(
        x, 44100
    )
    sep = Separator(OutOfMemoryAbove(2), device="cpu", segment=0.3, batch_size=8, progress=False)
    with pytest.warns(UserWarning) as caught:
        got = sep.separate(x, 44100)
    assert [str(w.message) for w in caught] == [
        "out of GPU memory with 8 segments per pass: continuing with 4",
        "out of GPU memory with 4 segments per pass: continuing with 2",
    ]
    assert sep.batch_size == 2
    np.testing.assert_allclose(got["vocals"], want["vocals"], atol=1e-6)
    np.testing.assert_array_equal(got["accompaniment"], x - got["vocals"])
    one = Separator(OutOfMemoryAbove(0), device="cpu", segment=0.3, batch_size=2, progress=False)
    with pytest.warns(UserWarning), pytest.raises(BSMamba2Error, match=r"one 0\.3 s segment: use a shorter --segment"):
        one.separate(x, 44100)


def test_auto_batch_size(monkeypatch):
    assert Separator(MaskModel(), device="cpu", progress=False).batch_size == 1  # the CPU: one
    paper, eight_s = BSMamba2Config(), 8 * 44100
    cuda = torch.device("cuda")
    per_segment = segment_bytes(paper, eight_s, 2)
    assert per_segment == 6 * 62 * 801 * 2320 * 2  # bands × frames × in_proj width × bf16
    for free, want in ((80e9, MAX_AUTO_BATCH), (8e9, 2), (1e9, 1), (0, 1)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (int(free), 80 * 10**9))
        assert auto_batch_size(paper, eight_s, cuda, "bf16") == want
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * 10**9, 80 * 10**9))
    assert auto_batch_size(paper, eight_s, cuda, "bf16") == 3 < MAX_AUTO_BATCH
    assert auto_batch_size(paper, eight_s, cuda, "fp32") == 1  # twice the bytes per element


def test_bf16_autocast_on_cpu_is_close_to_fp32(micro_model):
    x = np.random.randn(2, 30000).astype(np.float32) * 0.3
    fp32 = Separator(micro_model, device="cpu", segment=0.5, precision="fp32", progress=False).separate(
        x, 44100
    )
    bf16 = Separator(micro_model, device="cpu", segment=0.5, precision="bf16", progress=False).separate(
        x, 44100
    )
    err = np.abs(bf16["vocals"] - fp32["vocals"]).max() / np.abs(fp32["vocals"]).max()
    assert 0 < err < 0.1


def test_precision_and_device_defaults(monkeypatch):
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    for forced, cpu in (("1", "bf16"), ("0", "fp32")):
        monkeypatch.setenv("BSMAMBA2_CPU_BF16", forced)
        assert resolve_precision("auto", torch.device("cpu")) == cpu
        assert resolve_precision("auto", torch.device("mps")) == "fp32"
        assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    monkeypatch.delenv("BSMAMBA2_CPU_BF16")  # the CPU's own answer
    detected = device_module._detected_cpu_bf16()
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if detected else "fp32")
    monkeypatch.setenv("BSMAMBA2_CPU_BF16", "yes")
    with pytest.raises(Exception, match="BSMAMBA2_CPU_BF16='yes': expected 1, 0 or nothing"):
        resolve_precision("auto", torch.device("cpu"))
    with pytest.raises(Exception, match="unknown precision"):
        resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(Exception, match="unknown device"):
        Separator(MaskModel(), device="tpu", progress=False)



def test_cpu_bf16_detection_reads_torchs_probe(monkeypatch):
    cases = (({"avx512_bf16": True, "amx_bf16": False}, True), ({"amx_bf16": True}, True),
             ({"avx512_f": True, "avx2": True}, False))
    for capabilities, fast in cases:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda c=capabilities: c)
        device_module._detected_cpu_bf16.cache_clear()
        assert device_module._detected_cpu_bf16() is fast
    device_module._detected_cpu_bf16.cache_clear()


def test_device_auto_prefers_cuda_then_mps_then_the_cpu(monkeypatch):
    assert [auto_device(c, m) for c, m in [(True, True), (True, False), (False, True), (False, False)]] == [
        "cuda", "cuda", "mps", "cpu"
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(device_module, "mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(BSMamba2Error, match="'mps' requested but Apple's MPS is not available here"):
        resolve_device("mps")
    # MPS lacks parts of complex FFT support: the STFT and iSTFT stay on the CPU there
    assert fft_device(torch.device("mps")) == torch.device("cpu")
    assert fft_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert fft_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros((3, 1000), np.float32), "3 channels"),
        (np.zeros((1000, 2), np.float32), "pass audio.T"),
        (np.zeros((2, 0), np.float32), "zero-length"),
        (np.zeros((2, 2, 10), np.float32), "expected shape"),
        (np.array([[0.1, np.nan, 0.2]], np.float32), "NaN"),
    ],
)
def test_bad_arrays_are_one_line_errors(audio, message):
    with pytest.raises(AudioError, match=message):
        Separator(MaskModel(), device="cpu", progress=False).separate(audio, 44100)


def test_settings_are_validated():
    for kwargs in ({"segment": 0}, {"segment": 0.04}, {"overlap": 1.0}, {"overlap": -0.1}, {"batch_size": 0}):
        with pytest.raises(Exception, match=r"segment|overlap|batch"):
            Separator(MaskModel(), device="cpu", progress=False, **kwargs)


def test_multi_stem_models_get_names():
    x = np.random.randn(2, 5000).astype(np.float32)
    out = Separator(MaskModel(n_stems=2), device="cpu", segment=0.1, progress=False).separate(x, 44100)
    assert sorted(out) == ["stem1", "stem2"]
    np.testing.assert_allclose(out["stem2"], 2 * x, atol=1e-5)
    named = MaskModel(n_stems=2, targets=("vocals", "drums"))
    assert Separator(named, device="cpu", progress=False).outputs == ["vocals", "drums"]


def test_clipping_in_integer_files_warns_with_the_peak(tmp_path):
    x = np.random.uniform(-0.9, 0.9, size=(2, 20000)).astype(np.float32)
    x[0, 5000] = 0.95
    sf.write(tmp_path / "loud.wav", x.T, 44100, subtype="FLOAT")
    sep = Separator(MaskModel(gain=1.5), device="cpu", segment=0.2, progress=False)
    with pytest.warns(ClippingWarning, match=r"vocals.flac: peak 1\.4\d\d .*dBFS.*16-bit"):
        sep.separate_file(tmp_path / "loud.wav", tmp_path / "int", fmt="flac", bit_depth="16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = sep.separate_file(tmp_path / "loud.wav", tmp_path / "float")
    assert np.abs(read_audio(paths["vocals"])[0]).max() > 1.4  # float keeps it


@needs_extra("plot")
def test_plot_writes_a_png(tmp_path):
    x = np.random.randn(1, 30000).astype(np.float32) * 0.1
    sf.write(tmp_path / "song.wav", x.T, 22050)
    paths = Separator(MaskModel(gain=0.5), device="cpu", segment=0.5, progress=False).separate_file(
        tmp_path / "song.wav", tmp_path / "out", plot=True
    )
    assert paths["plot"] == tmp_path / "out" / "song" / "song.png"
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _recorder():
    events = []
    return events, events.append


@needs_extra("plot")
def test_progress_callback_counts_seconds_to_the_end(tmp_path):
    """Several reports in order, seconds growing to the input's length, then one ``done``."""
    rate, n = 22050, 150_001  # three blocks of input
    x = np.random.randn(2, n).astype(np.float32) * 0.1
    events, record = _recorder()
    sep = Separator(MaskModel(gain=0.5), device="cpu", segment=0.5, progress=False)
    sep.separate(x, rate, on_progress=record)
    assert len(events) >= 3
    assert [e.stage for e in events] == ["separating"] * (len(events) - 1) + ["done"]
    assert {e.file for e in events} == {"audio"} and {e.total for e in events} == {n / rate}
    done = [e.done for e in events]
    assert np.all(np.diff(done[:-1]) > 0)
    assert done[-1] == pytest.approx(n / rate) and events[-1].fraction == pytest.approx(1.0)
    assert 0 < events[0].fraction < 1

    sf.write(tmp_path / "song.wav", x.T, rate)
    events.clear()
    sep.separate_file(tmp_path / "song.wav", tmp_path / "out", plot=True, on_progress=record)
    assert {e.file for e in events} == {"song.wav"}
    assert [e.stage for e in events[-2:]] == ["plotting", "done"]
    assert events[-1].done == pytest.approx(n / rate) and events[-1].total == events[-1].done


def test_progress_callback_reports_a_compile(monkeypatch):
    """``compile="auto"`` deciding to compile says so before the first output."""
    import bsmamba2.separation.engine as engine

    monkeypatch.setattr(engine, "compile_pays", lambda eager, warm: True)
    monkeypatch.setattr(engine, "compile_blocks", lambda model, device: None)
    events, record = _recorder()
    sep = Separator(MaskModel(), device="cpu", segment=0.5, compile="auto", progress=False)
    sep.separate(np.random.randn(2, 30000).astype(np.float32), 44100, on_progress=record)
    assert events[0].stage == "compiling" and events[0].done == 0
    assert [e.stage for e in events].count("compiling") == 1 and events[-1].stage == "done"


def test_progress_callback_raising_cancels_and_removes_outputs(tmp_path):
    x = np.random.randn(2, 150_000).astype(np.float32) * 0.1
    sf.write(tmp_path / "song.wav", x.T, 44100)

    def cancel(event):
        if event.done > 0:
            raise KeyboardInterrupt

    sep = Separator(MaskModel(), device="cpu", segment=0.5, progress=False)
    with pytest.raises(KeyboardInterrupt):
        sep.separate_file(tmp_path / "song.wav", tmp_path / "out", on_progress=cancel)
    assert not list((tmp_path / "out").rglob("*.wav"))


def test_a_preview_is_the_separation_of_that_part(tmp_path):
    """``start``/``duration``: the outputs are what separating the cut-out part gives, and the
    null test holds against that part of the mixture."""
    sep = Separator(SegmentLevelModel(), segment=0.4, overlap=0.25, progress=False)
    x = band_limited(2, 2.0, 44100)
    sf.write(tmp_path / "song.wav", x.T, 44100, subtype="FLOAT")
    out = sep.separate_file(tmp_path / "song.wav", tmp_path / "out", start=0.5, duration=0.8)
    part = x[:, 22050 : 22050 + 35280]
    vocals, accompaniment = read_audio(out["vocals"])[0], read_audio(out["accompaniment"])[0]
    np.testing.assert_allclose(vocals, sep.separate(part, 44100)["vocals"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(accompaniment, part - vocals)
    with pytest.raises(AudioError, match="past the end"):
        sep.separate_file(tmp_path / "song.wav", tmp_path / "late", start=3.0)


class ChannelGainModel(MaskModel):
    """Left × 1, right × 0.25, plus a constant in one bin: neither channel- nor sign-symmetric,
    so each TTA view gives another answer and each must be turned back exactly."""

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        gain = torch.tensor([1.0, 0.25], device=spec.device).view(1, 2, 1, 1)
        out = spec * gain
        out[..., 40, :] += 300.0  # ~0.02 of full scale after the iSTFT
        return out.unsqueeze(1)


def test_tta_turns_every_view_back_before_the_average():
    x = band_limited(2, 1.3, 44100)
    plain = Separator(ChannelGainModel(), segment=0.4, overlap=0.25, progress=False)
    tta = Separator(ChannelGainModel(), segment=0.4, overlap=0.25, progress=False, tta=True)
    bias = plain.separate(np.zeros_like(x), 44100)["vocals"]  # what the constant bin adds
    assert np.abs(bias).max() > 1e-3
    np.testing.assert_allclose(plain.separate(x, 44100)["vocals"], x * [[1.0], [0.25]] + bias, atol=1e-5)
    out = tta.separate(x, 44100)
    # as is: (L, R/4) + b; polarity inverted and back: (L, R/4) - b; swapped and back: (L/4, R) + b
    np.testing.assert_allclose(out["vocals"], x * [[0.75], [0.5]] + bias / 3, atol=1e-5)
    np.testing.assert_array_equal(out["accompaniment"], x - out["vocals"])  # the null test holds


def test_tta_of_a_symmetric_model_changes_nothing():
    """SegmentLevelModel is odd and treats both channels alike: the views agree, over many segments."""
    x = band_limited(2, 1.3, 44100)
    plain = Separator(SegmentLevelModel(), segment=0.3, overlap=0.5, progress=False).separate(x, 44100)
    tta = Separator(SegmentLevelModel(), segment=0.3, overlap=0.5, progress=False, tta=True).separate(x, 44100)
    np.testing.assert_allclose(tta["vocals"], plain["vocals"], atol=1e-6)
    mono = Separator(ChannelGainModel(), segment=0.3, progress=False, tta=True).separate(x[0], 44100)
    np.testing.assert_allclose(mono["vocals"], x[0] * 0.625, atol=1e-5)  # mono: as is and inverted only


def test_shifts_average_passes_over_delayed_inputs():
    x = band_limited(2, 1.3, 44100)
    settings = {"segment": 0.4, "overlap": 0.25, "progress": False}
    sep = Separator(SegmentLevelModel(), shifts=3, **settings)
    assert sep.shift_samples[0] == 0 and all(1 <= d <= 22050 for d in sep.shift_samples[1:])
    assert Separator(SegmentLevelModel(), shifts=3, **settings).shift_samples == sep.shift_samples  # seeded
    plain = Separator(SegmentLevelModel(), **settings)
    by_hand = [
        plain.separate(np.concatenate([np.zeros((2, d), np.float32), x], axis=1), 44100)["vocals"][:, d:]
        for d in sep.shift_samples
    ]
    out = sep.separate(x, 44100)
    np.testing.assert_allclose(out["vocals"], sum(by_hand) / 3, atol=1e-6)
    assert np.abs(out["vocals"] - by_hand[0]).max() > 1e-4  # the shifts matter for this model
    np.testing.assert_array_equal(out["accompaniment"], x - out["vocals"])
    with pytest.raises(BSMamba2Error, match="shifts must be a whole number of at least 1, got 0"):
        Separator(SegmentLevelModel(), shifts=0)


@pytest.mark.parametrize(("dtype", "subtype"), [(np.int16, "PCM_16"), (np.int32, "PCM_32"), (np.int8, "PCM_S8")])
def test_integer_input_is_scaled_as_soundfile_reads_it(tmp_path, dtype, subtype):
    """int16 samples of 20000 are 0.61 of full scale, not 20000.0."""
    info = np.iinfo(dtype)
    pcm = np.random.default_rng(5).integers(info.min, info.max, size=(2, 30011), endpoint=True).astype(dtype)
    left_aligned = pcm.astype(np.int32) << (32 - 8 * pcm.itemsize)  # soundfile writes int8 from int32
    sf.write(tmp_path / "pcm.aiff", left_aligned.T, 44100, subtype=subtype)
    as_read = sf.read(tmp_path / "pcm.aiff", dtype="float32")[0].T
    sep = Separator(MaskModel(), device="cpu", segment=0.25, overlap=0.25, progress=False)
    out = sep.separate(pcm, 44100)
    np.testing.assert_array_equal(out["vocals"] + out["accompaniment"], as_read)
    assert np.abs(out["vocals"] - as_read).max() < 1e-5
    np.testing.assert_array_equal(sep.separate(torch.from_numpy(pcm), 44100)["vocals"], out["vocals"])


def test_unsigned_8_bit_and_unscaled_integers():
    pcm = np.array([[0, 64, 128, 192, 255] * 2000], np.uint8)
    out = Separator(MaskModel(), device="cpu", segment=0.25, progress=False).separate(pcm, 44100)
    assert np.abs(out["vocals"] - (pcm.astype(np.float32) - 128) / 128).max() < 1e-5
    with pytest.raises(AudioError, match="int64 have no agreed full scale"):
        Separator(MaskModel(), device="cpu", progress=False).separate(np.ones((2, 1000), np.int64), 44100)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_separation_matches_the_cpu(micro_model):
    """The Triton kernels' separation (fp32) against the CPU reference path, through the whole
    streaming engine: several batches, an OOM-free auto batch size, the null test."""
    x = np.random.default_rng(11).standard_normal((2, 70000)).astype(np.float32) * 0.3
    settings = {"segment": 0.5, "precision": "fp32", "progress": False}
    cpu = Separator(micro_model, device="cpu", **settings).separate(x, 44100)
    cuda = Separator(copy.deepcopy(micro_model), device="cuda", **settings)
    assert cuda.batch_size >= 1
    got = cuda.separate(x, 44100)
    scale = np.abs(cpu["vocals"]).max()
    assert scale > 1e-3 and np.abs(got["vocals"] - cpu["vocals"]).max() <= 1e-2 * scale
    np.testing.assert_array_equal(got["accompaniment"], x - got["vocals"])
