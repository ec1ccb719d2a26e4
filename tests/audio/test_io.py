"""Audio I/O (soundfile, ffmpeg fallback), validation, atomic writing, resampling, chunking."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from bsmamba2.audio import (
    AudioError,
    StreamResampler,
    TruncatedAudioWarning,
    audio_writer,
    io,
    open_audio,
    read_audio,
    resample,
    subtype_for,
)
from bsmamba2.audio.io import (
    BLOCK,
    _libsndfile_failure,
    compression_level,
    ffmpeg_available,
    output_rate,
    peak_warning,
)
from bsmamba2.audio.resample import continuation
from bsmamba2.separation.chunking import Chunker, crossfade_window


def _noise(channels: int, samples: int, scale: float = 0.3) -> np.ndarray:
    return (np.random.randn(channels, samples) * scale).astype(np.float32)


def test_wav_blocks_round_trip(tmp_path):
    x = _noise(2, 3 * BLOCK + 123)
    sf.write(tmp_path / "a.wav", x.T, 44100, subtype="FLOAT")
    with open_audio(tmp_path / "a.wav") as src:
        assert (src.samplerate, src.channels, src.frames) == (44100, 2, x.shape[1])
        blocks = list(src.blocks(BLOCK))
    assert all(b.shape[0] == 2 and b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), x)


def test_soundfile_reads_mp3(tmp_path):
    """Current libsndfile (>= 1.1) decodes MP3 itself: no ffmpeg needed."""
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3 support")
    t = np.arange(44100) / 44100
    x = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
    sf.write(tmp_path / "a.mp3", x.T, 44100, format="MP3")
    with open_audio(tmp_path / "a.mp3") as src:
        assert type(src).__name__ == "_SoundFileSource"
    y, sr = read_audio(tmp_path / "a.mp3")
    assert sr == 44100 and y.shape[0] == 2 and abs(y.shape[1] - x.shape[1]) < 4096
    spectrum = np.abs(np.fft.rfft(y[0, 4096:36864]))
    assert abs(np.argmax(spectrum) * 44100 / 32768 - 440) < 3  # the right tone in the right channel


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_ffmpeg_fallback_m4a_is_exact_for_lossless_alac(tmp_path):
    pcm = np.random.randint(-20000, 20000, size=(2, 30000)).astype(np.int16)
    sf.write(tmp_path / "a.wav", pcm.T, 48000, subtype="PCM_16")
    x = pcm / 32768.0
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(tmp_path / "a.wav"), "-c:a", "alac", str(tmp_path / "a.m4a")],
        check=True,
    )
    with open_audio(tmp_path / "a.m4a") as src:
        assert type(src).__name__ == "_FFmpegSource"
        assert (src.samplerate, src.channels) == (48000, 2)
        y = np.concatenate(list(src.blocks(4096)), axis=1)
    np.testing.assert_array_equal(y, x)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_ffmpeg_fallback_aac(tmp_path):
    t = np.arange(44100) / 44100
    x = np.stack([0.5 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
    sf.write(tmp_path / "a.wav", x.T, 44100)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(tmp_path / "a.wav"), "-c:a", "aac", str(tmp_path / "a.m4a")],
        check=True,
    )
    y, sr = read_audio(tmp_path / "a.m4a")
    assert sr == 44100 and y.shape[0] == 2 and abs(y.shape[1] - x.shape[1]) < 2048
    assert abs(np.sqrt(np.mean(y[:, 4096:-4096] ** 2)) - 0.5 / np.sqrt(2)) < 0.02


def _bad_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "garbage.wav").write_bytes(np.random.bytes(5000))
    sf.write(tmp_path / "zero.wav", np.zeros((0, 2), np.float32), 44100, subtype="FLOAT")
    nan = _noise(2, 1000)
    nan[1, 700] = np.nan
    sf.write(tmp_path / "nan.wav", nan.T, 44100, subtype="FLOAT")
    sf.write(tmp_path / "surround.wav", _noise(6, 1000).T, 44100, subtype="FLOAT")
    return {
        "empty.wav": "empty",
        "garbage.wav": "not a readable audio file",
        "zero.wav": "zero-length",
        "nan.wav": "NaN or infinite sample at 0.016 s",
        "surround.wav": "6 channels",
        "missing.wav": "no such file",
    }


def test_bad_inputs_give_one_line_errors(tmp_path):
    for name, expected in _bad_files(tmp_path).items():
        with pytest.raises(AudioError) as info:
            read_audio(tmp_path / name)
        message = str(info.value)
        assert expected in message and name in message and "\n" not in message


def test_writer_is_atomic(tmp_path):
    target = tmp_path / "out" / "v.wav"
    with pytest.raises(KeyboardInterrupt), audio_writer(target, 44100, 2) as writer:
        writer.write(_noise(2, 1000))
        assert not target.exists()
        raise KeyboardInterrupt
    assert not target.exists() and not target.parent.exists()  # no temporary file, no empty folder
    target.parent.mkdir()
    target.write_bytes(b"old")
    x = _noise(2, 1000)
    with audio_writer(target, 44100, 2) as writer:
        writer.write(x[:, :600])
        writer.write(x[:, 600:])
        assert target.read_bytes() == b"old"  # the old file stays until the new one is complete
    np.testing.assert_array_equal(read_audio(target)[0], x)
    assert [p.name for p in target.parent.iterdir()] == ["v.wav"]
    assert target.stat().st_mode & 0o044  # ordinary permissions, not a private temporary's


@pytest.mark.skipif(not hasattr(io.os, "POSIX_FADV_DONTNEED"), reason="no posix_fadvise here")
def test_the_writer_hints_each_block_to_disk_and_releases_its_descriptor(tmp_path, monkeypatch):
    """After each block the system is told to write the data out (posix_fadvise DONTNEED on
    the temporary file, no wait), on success and on an error the descriptor for it is closed;
    the file holds every sample."""
    hints = []
    monkeypatch.setattr(io.os, "posix_fadvise", lambda fd, *how: hints.append((fd, os.fstat(fd).st_ino, how)))
    x = _noise(2, 3000)
    with audio_writer(tmp_path / "v.wav", 44100, 2) as writer:
        for start in range(0, 3000, 1000):
            writer.write(x[:, start : start + 1000])
        (temporary,) = tmp_path.glob(".v.wav.*.part")
        inode = temporary.stat().st_ino
    assert [(ino, how) for _, ino, how in hints] == [(inode, (0, 0, io.os.POSIX_FADV_DONTNEED))] * 3
    with pytest.raises(OSError):
        os.fstat(hints[0][0])  # closed
    np.testing.assert_array_equal(read_audio(tmp_path / "v.wav")[0], x)
    hints.clear()
    with pytest.raises(KeyboardInterrupt), audio_writer(tmp_path / "a.wav", 44100, 2) as writer:
        writer.write(x)
        raise KeyboardInterrupt
    assert len(hints) == 1 and not (tmp_path / "a.wav").exists()
    with pytest.raises(OSError):
        os.fstat(hints[0][0])


def test_integer_outputs_clip_and_report_the_peak(tmp_path):
    x = np.array([[0.5, 1.25, -1.5, 0.25]], np.float32)
    with audio_writer(tmp_path / "a.flac", 44100, 1, subtype_for("flac", "16")) as writer:
        writer.write(x)
    assert writer.clipped and writer.peak == 1.5
    assert "peak 1.500 (+3.52 dBFS)" in peak_warning(writer) and "16-bit" in peak_warning(writer)
    y = read_audio(tmp_path / "a.flac")[0]
    np.testing.assert_allclose(y, np.clip(x, -1, 1), atol=1 / 32767)
    with audio_writer(tmp_path / "b.wav", 44100, 1, subtype_for("wav", None)) as float_writer:
        float_writer.write(x)
    assert not float_writer.clipped
    np.testing.assert_array_equal(read_audio(tmp_path / "b.wav")[0], x)  # float keeps everything


def test_subtypes():
    assert subtype_for("wav", None) == "FLOAT" and subtype_for("flac", None) == "PCM_24"
    assert subtype_for("wav", "16") == "PCM_16" and subtype_for("flac", "24") == "PCM_24"
    with pytest.raises(AudioError, match="FLAC stores integers"):
        subtype_for("flac", "float")
    with pytest.raises(AudioError, match="unknown output format"):
        subtype_for("aac", None)
    assert [subtype_for(f, None) for f in ("mp3", "ogg", "opus")] == ["MPEG_LAYER_III", "VORBIS", "OPUS"]
    with pytest.raises(AudioError, match="mp3 has no bit depth"):
        subtype_for("mp3", "24")


def _music(channels: int, seconds: float, rate: int) -> np.ndarray:
    """Chords with a little noise: what lossy codecs are made for (white noise is not)."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    tones = [sum(0.1 * np.sin(2 * np.pi * f * (1 + 0.01 * c) * t + c) for f in (220, 277, 330, 440, 880))
             for c in range(channels)]
    return (np.stack(tones) + 0.01 * rng.standard_normal((channels, t.size))).astype(np.float32)


def _without_lossy_encoders(monkeypatch) -> None:
    """soundfile as on a libsndfile built without MP3, Vorbis and Opus (before 1.1)."""
    available = sf.available_subtypes
    lossy = {"MPEG_LAYER_III", "VORBIS", "OPUS"}
    monkeypatch.setattr(
        sf, "available_subtypes", lambda fmt=None: {k: v for k, v in available(fmt).items() if k not in lossy}
    )


@pytest.mark.parametrize("encoder", ["libsndfile", "ffmpeg"])
@pytest.mark.parametrize(
    ("fmt", "rate", "channels", "kbps"),
    [("mp3", 44100, 2, 192), ("mp3", 22050, 1, 64), ("opus", 48000, 2, 128), ("ogg", 44100, 2, None)],
)
def test_lossy_round_trips(tmp_path, fmt, rate, channels, kbps, encoder, monkeypatch):
    if encoder == "ffmpeg":
        if not ffmpeg_available():
            pytest.skip("needs ffmpeg")
        _without_lossy_encoders(monkeypatch)  # the fallback, as where libsndfile lacks the encoder
    seconds = 3.0
    x = _music(channels, seconds, rate)
    target = tmp_path / f"a.{fmt}"
    with audio_writer(target, rate, channels, subtype_for(fmt, None), bitrate=kbps) as writer:
        for start in range(0, x.shape[1], 10000):
            writer.write(x[:, start : start + 10000])
    assert (type(writer).__name__ == "_FfmpegWriter") == (encoder == "ffmpeg")
    assert not writer.clipped and list(tmp_path.iterdir()) == [target]
    info = sf.info(str(target))
    assert info.format == ("MP3" if fmt == "mp3" else "OGG") and (info.samplerate, info.channels) == (rate, channels)
    y, read_rate = read_audio(target)
    assert read_rate == rate and y.shape == x.shape  # gapless: the encoder's delay and padding trimmed
    level = 20 * np.log10(np.sqrt(np.mean(y**2)) / np.sqrt(np.mean(x**2)))
    assert abs(level) < 0.5, level
    assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.99
    if kbps:  # the asked bitrate, to the codec's framing (Opus: a variable-rate target)
        assert abs(target.stat().st_size * 8 / seconds / 1000 - kbps) < 0.1 * kbps


def test_without_an_mp3_encoder_or_ffmpeg_it_is_one_line(tmp_path, monkeypatch):
    _without_lossy_encoders(monkeypatch)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    missing = r"cannot write mp3 and ffmpeg is not installed: install ffmpeg"
    with pytest.raises(AudioError, match=missing), audio_writer(tmp_path / "a.mp3", 44100, 2, "MPEG_LAYER_III"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_an_ffmpeg_output_that_fails_leaves_nothing(tmp_path, monkeypatch):
    if not ffmpeg_available():
        pytest.skip("needs ffmpeg")
    _without_lossy_encoders(monkeypatch)
    monkeypatch.setitem(io.FFMPEG_ENCODERS, "MPEG_LAYER_III", ("libnosuchmp3", "mp3"))  # an ffmpeg without LAME
    failing = r"a\.mp3: ffmpeg could not write it \(.*libnosuchmp3"
    with pytest.raises(AudioError, match=failing), audio_writer(tmp_path / "a.mp3", 44100, 2, "MPEG_LAYER_III") as w:
        for _ in range(20):
            w.write(_music(2, 0.5, 44100))
    assert list(tmp_path.iterdir()) == []


def test_lossy_outputs_clip_and_say_how_to_keep_the_peak(tmp_path):
    x = _music(1, 1.0, 44100) * 12
    with audio_writer(tmp_path / "a.mp3", 44100, 1, subtype_for("mp3", None)) as writer:
        writer.write(x)
    assert writer.clipped and "MP3 file; use --format wav (float)" in peak_warning(writer)
    assert np.abs(read_audio(tmp_path / "a.mp3")[0]).max() < 1.1  # clipped before encoding


def test_output_rates():
    assert output_rate("opus", 44100) == 48000 and output_rate("opus", 16000) == 16000
    assert output_rate("mp3", 96000) == 48000 and output_rate("mp3", 44100) == 44100
    assert output_rate("mp3", 30000) == 32000 and output_rate("wav", 96000) == 96000
    assert output_rate("flac", 44100, 22050) == 22050 and output_rate("opus", 44100, 24000) == 24000
    with pytest.raises(AudioError, match="opus cannot store 44100 Hz; choose --sample-rate from 8000,"):
        output_rate("opus", 48000, 44100)
    with pytest.raises(AudioError, match="invalid output sample rate"):
        output_rate("wav", 44100, 0)


def test_bitrates():
    # libsndfile's own mapping (mpeg_l3_encode.c: bitrate = (int) (320 - level * 288)) gives the asked value
    assert all(int(320 - compression_level("mp3", k, 44100, 2) * 288) == k for k in range(32, 321))
    assert all(int(64 - compression_level("mp3", k, 11025, 1) * 56) == k for k in range(8, 65))
    assert compression_level("opus", 512, 48000, 2) == pytest.approx(0)
    assert compression_level("ogg", None, 44100, 2) is None and compression_level("wav", None, 44100, 2) is None
    with pytest.raises(AudioError, match="--bitrate applies to mp3 and opus, not wav"):
        compression_level("wav", 192, 44100, 2)
    with pytest.raises(AudioError, match="not ogg \\(Vorbis is quality-based\\)"):
        compression_level("ogg", 192, 44100, 2)
    with pytest.raises(AudioError, match="mp3 at 22050 Hz, 2 channel\\(s\\): --bitrate must be 8-160 kbps, got 320"):
        compression_level("mp3", None, 22050, 2)


@pytest.mark.parametrize(("rate_in", "rate_out"), [(48000, 44100), (22050, 44100), (44100, 44100)])
def test_stream_resampler_equals_whole_array(rate_in, rate_out):
    x = _noise(2, 50000)
    stream = StreamResampler(rate_in, rate_out, 2)
    sizes = np.random.randint(1, 9000, size=40)
    parts, start = [], 0
    for size in sizes:
        parts.append(stream(x[:, start : start + size]))
        start += size
    parts.append(stream.flush())
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), resample(x, rate_in, rate_out))


def test_continuation_predicts_a_sum_of_sinusoids():
    """Burg's predictor continues what it was fitted on (the definition: the true signal
    past the end), fading it out with a half cosine."""
    rng = np.random.default_rng(3)
    t = np.arange(1500) / 44100
    x = sum(rng.uniform(0.1, 0.3) * np.sin(2 * np.pi * rng.uniform(50, 15000) * t + rng.uniform(0, 6)) for _ in range(8))
    known, future = x[None, :1000], x[1000:1200]
    fade = 0.5 + 0.5 * np.cos(np.pi * np.arange(200) / 200)
    error = np.abs(continuation(known, 260, 200)[0] - np.r_[future * fade, np.zeros(60)])
    assert error[:10].max() < 1e-4 and error.max() < 0.02 * np.abs(x).max()  # exact where it counts
    assert not continuation(np.zeros((2, 500)), 50, 50).any()  # silence stays silent


@pytest.mark.parametrize(("rate_in", "rate_out"), [(88200, 44100), (44100, 8000), (8000, 44100), (44100, 44099)])
@pytest.mark.parametrize("samples", [1, 2, 7, 1023, 1025])
def test_resampled_length_is_soxrs_for_short_inputs(rate_in, rate_out, samples):
    x = _noise(1, samples)
    assert resample(x, rate_in, rate_out).shape == soxr.resample(x.T, rate_in, rate_out, quality="VHQ").T.shape


@pytest.mark.parametrize(("segment", "overlap"), [(100, 25), (100, 50), (100, 0), (64, 1), (90, 60)])
def test_crossfade_windows_sum_to_one(segment, overlap):
    w = crossfade_window(segment, overlap)
    assert w.min() > 0 and w.max() <= 1
    hop = segment - overlap
    total = np.zeros(hop * 20 + segment)
    for k in range(21):
        total[k * hop : k * hop + segment] += w
    if 2 * overlap <= segment:  # two windows at a time: the ramps are complementary
        np.testing.assert_allclose(total[segment:-segment], 1, atol=1e-6)
    assert total[segment:-segment].min() > 0


@pytest.mark.parametrize(
    ("segment", "hop", "pad"), [(100, 75, 25), (100, 100, 0), (100, 50, 50), (100, 10, 90)]
)
@pytest.mark.parametrize("length", [1, 37, 99, 100, 101, 777])
def test_chunker_reconstructs_any_length(segment, hop, pad, length):
    x = _noise(2, length)
    chunker = Chunker(segment, hop, pad, 2)
    out, cut = [], 0
    for start in range(0, length, 33):
        for seg in chunker.feed(x[:, start : start + 33]):
            out.append(chunker.add(np.stack([seg, 2 * seg])))
            cut += 1
    for seg in chunker.finish():
        out.append(chunker.add(np.stack([seg, 2 * seg])))
        cut += 1
    y = np.concatenate(out, axis=-1)
    assert cut == chunker.segments_for(length) and y.shape == (2, 2, length)
    np.testing.assert_allclose(y[0], x, atol=1e-6)
    np.testing.assert_allclose(y[1], 2 * x, atol=1e-6)


@pytest.mark.parametrize(
    ("segment", "hop", "pad"), [(100, 75, 25), (100, 100, 0), (100, 50, 50), (100, 10, 90), (101, 49, 49)]
)
@pytest.mark.parametrize("length", [1, 99, 777])
def test_chunker_adds_the_bits_of_a_whole_array_overlap_add(segment, hop, pad, length):
    """Streaming changes no bit: each segment's weighted result added in float32 in order onto
    zeros, the weights summed in float64, one float64 division rounded to float32 (signed
    zeros and subnormal samples included, which the sums from zero turn and round as they are)."""
    rng = np.random.default_rng()
    x = rng.standard_normal((2, length)).astype(np.float32)
    x[:, ::7], x[:, ::11], x[:, ::13] = -0.0, 1e-44, -1e-45
    chunker = Chunker(segment, hop, pad, 2)

    def model(s: np.ndarray) -> np.ndarray:  # three stems, with signed zeros among them
        return np.stack([-s, s * np.float32(0.3), np.minimum(s, -0.0)])

    segments, out = [], []
    for start in range(0, length, 33):
        segments += chunker.feed(x[:, start : start + 33])
        out += [chunker.add(model(s)) for s in segments[len(out) :]]
    segments += chunker.finish()
    out += [chunker.add(model(s)) for s in segments[len(out) :]]
    window = crossfade_window(segment, segment - hop)
    total = np.zeros((3, 2, (len(segments) - 1) * hop + segment), np.float32)
    weights = np.zeros(total.shape[-1])
    for k, s in enumerate(segments):
        where = slice(k * hop, k * hop + segment)
        total[..., where] += model(s) * window
        weights[where] += window
    expected = (total / weights).astype(np.float32)[..., pad : pad + length]
    assert np.concatenate(out, axis=-1).tobytes() == expected.tobytes()


def test_chunker_official_layout_is_back_to_back_zero_padded():
    x = _noise(1, 250)
    chunker = Chunker(100, 100, 0, 1)
    segments = chunker.feed(x) + chunker.finish()
    assert len(segments) == 3
    np.testing.assert_array_equal(np.concatenate(segments, axis=1)[:, :250], x)
    assert not segments[2][:, 50:].any()


def test_chunker_keeps_only_a_few_segments_alive():
    """Bounded memory: what the chunker holds does not grow with the stream's length."""
    chunker = Chunker(100, 75, 25, 2)
    held = 0
    for _ in range(2000):
        for seg in chunker.feed(_noise(2, 40)):
            chunker.add(seg[None])
            held = max(held, chunker._buffer.shape[1], chunker._acc.shape[1])
    assert held <= 140


def test_a_preview_decodes_only_its_part(tmp_path, monkeypatch):
    x = _noise(2, 5 * 44100)
    sf.write(tmp_path / "a.wav", x.T, 44100, subtype="FLOAT")
    read = []
    original = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, frames, **kw: read.append(frames) or original(self, frames, **kw))
    with open_audio(tmp_path / "a.wav", start=1.5, duration=0.75) as src:
        assert src.frames == 33075 and src.duration == 0.75
        y = np.concatenate(list(src.blocks(10000)), axis=1)
    np.testing.assert_array_equal(y, x[:, 66150 : 66150 + 33075])
    assert sum(read) <= 40000  # four blocks of 10000 frames, not the 1.5 s before the start
    with open_audio(tmp_path / "a.wav", start=4.5) as src:  # to the end
        np.testing.assert_array_equal(np.concatenate(list(src.blocks()), axis=1), x[:, 198450:])
    with open_audio(tmp_path / "a.wav", duration=60) as src:  # longer than the file: all of it
        assert src.frames == x.shape[1]


@pytest.mark.parametrize(
    ("start", "duration", "message"),
    [
        (6.0, None, "--start 6 s is past the end (5.0 s)"),
        (-1.0, None, "--start must be 0 or more seconds, got -1"),
        (0.0, 0.0, "--duration must be more than 0 seconds, got 0"),
        (float("nan"), None, "--start must be 0 or more seconds"),
    ],
)
def test_a_preview_outside_the_file_is_an_error(tmp_path, start, duration, message):
    sf.write(tmp_path / "a.wav", _noise(1, 5 * 8000).T, 8000)
    with pytest.raises(AudioError, match=re.escape(f"a.wav: {message}")):
        open_audio(tmp_path / "a.wav", start=start, duration=duration)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_a_preview_through_ffmpeg_seeks_in_the_input(tmp_path):
    pcm = np.random.randint(-20000, 20000, size=(2, 48000)).astype(np.int16)
    sf.write(tmp_path / "a.wav", pcm.T, 48000, subtype="PCM_16")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(tmp_path / "a.wav"), "-c:a", "alac", str(tmp_path / "a.m4a")],
        check=True,
    )
    with open_audio(tmp_path / "a.m4a", start=0.25, duration=0.5) as src:
        assert type(src).__name__ == "_FFmpegSource" and src.frames == 24000
        y = np.concatenate(list(src.blocks(4096)), axis=1)
    np.testing.assert_array_equal(y, pcm[:, 12000:36000] / 32768.0)
    with open_audio(tmp_path / "a.m4a", start=0.9) as src:  # to the end
        assert np.concatenate(list(src.blocks(4096)), axis=1).shape == (2, 4800)


def _truncate(path, fraction: float) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(int(size * fraction))


@pytest.mark.parametrize(("subtype", "container"), [("PCM_16", "WAV"), ("FLOAT", "WAV"), ("PCM_24", "RF64")])
def test_truncated_wav_warns_and_reads_what_is_there(tmp_path, subtype, container):
    """A 16 s header over 5.3 s of samples: libsndfile reports 5.3 s without a word."""
    x = _noise(2, 16 * 8000, 0.1)
    path = tmp_path / "cut.wav"
    sf.write(path, x.T, 8000, subtype=subtype, format=container)
    _truncate(path, 1 / 3)
    with pytest.warns(TruncatedAudioWarning, match=r"cut.wav: truncated: the header declares 16.0 s, the file holds 5.3 s"):
        y, _ = read_audio(path)
    np.testing.assert_allclose(y, x[:, : y.shape[1]], atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sf.write(path, x.T, 8000, subtype=subtype, format=container)
        assert read_audio(path)[0].shape == x.shape  # whole files: no warning


def test_truncated_mp3_warns(tmp_path):
    path = tmp_path / "cut.mp3"
    sf.write(path, _noise(2, 16 * 8000).T, 8000)
    _truncate(path, 1 / 3)
    with pytest.warns(TruncatedAudioWarning, match=r"cut.mp3: truncated: the header declares 16.0 s"):
        read_audio(path)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_real_full_device_is_named_as_such():
    """/dev/full fails every write with ENOSPC: libsndfile's system reason reaches the message."""
    with pytest.raises(sf.LibsndfileError) as info:
        sf.SoundFile("/dev/full", "w", 44100, 2, subtype="FLOAT", format="WAV")
    error = _libsndfile_failure(info.value, Path("out/vocals.wav"))
    assert str(error) == "no space left on device writing out/vocals.wav" and error.errno == errno.ENOSPC
