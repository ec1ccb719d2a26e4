"""WAV outputs beyond RIFF's 4 GB limit are written as RF64; smaller ones stay plain WAV."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from bsmamba2 import Separator
from bsmamba2.audio import audio_writer
from bsmamba2.audio import io as audio_io
from bsmamba2.audio.io import WAV_LIMIT, wav_container
from tests.helpers.models import MaskModel

HOUR = 3600.0


@pytest.mark.parametrize(
    "fmt,seconds,rate,channels,subtype,expected",
    [
        ("wav", 3.5 * HOUR, 44100, 2, "FLOAT", "RF64"),  # 4.45 GB
        ("wav", 3.0 * HOUR, 44100, 2, "FLOAT", None),  # 3.81 GB
        ("wav", 3.5 * HOUR, 44100, 2, "PCM_16", None),  # 2.2 GB
        ("wav", 7.0 * HOUR, 44100, 1, "FLOAT", "RF64"),  # mono, 4.45 GB
        ("wav", 7.0 * HOUR, 48000, 2, "PCM_24", "RF64"),  # 7.3 GB
        ("wav", None, 44100, 2, "PCM_16", "RF64"),  # length unknown (ffmpeg stream): to be safe
        ("flac", 9.0 * HOUR, 44100, 2, "PCM_24", None),  # FLAC has no such limit
        ("wav", 1.0, 44100, 2, "FLOAT", None),
    ],
)
def test_wav_container_decision(fmt, seconds, rate, channels, subtype, expected):
    assert wav_container(fmt, seconds, rate, channels, subtype) == expected


def test_wav_container_threshold_has_headroom():
    """Just under the limit by the plain count is RF64 already: estimates and headers get margin."""
    frames = WAV_LIMIT // 8  # float stereo: 8 bytes a frame, one frame short of the limit
    assert wav_container("wav", (frames - 1) / 44100, 44100, 2, "FLOAT") == "RF64"
    assert wav_container("wav", 0.98 * frames / 44100, 44100, 2, "FLOAT") is None


def test_rf64_round_trip(tmp_path):
    audio = np.random.default_rng(0).standard_normal((2, 5000)).astype(np.float32) * 0.1
    target = tmp_path / "long.wav"
    with audio_writer(target, 44100, 2, "FLOAT", container="RF64") as writer:
        writer.write(audio[:, :3000])
        writer.write(audio[:, 3000:])
    assert target.read_bytes()[:4] == b"RF64"
    info = sf.info(str(target))
    assert (info.format, info.subtype, info.samplerate, info.frames) == ("RF64", "FLOAT", 44100, 5000)
    back, rate = sf.read(str(target), dtype="float32", always_2d=True)
    assert rate == 44100 and np.array_equal(back.T, audio)


def test_separate_file_switches_to_rf64_past_the_limit(tmp_path, monkeypatch):
    """With the limit lowered to a few kB, separate_file writes RF64 stems that still null-test."""
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal((2, 30000)) * 0.1).astype(np.float32)
    source = tmp_path / "song.wav"
    sf.write(str(source), audio.T, 44100, subtype="FLOAT")
    sep = Separator(MaskModel(gain=0.5), device="cpu", segment=0.5, progress=False)
    small = sep.separate_file(source, tmp_path / "a")
    assert {sf.info(str(p)).format for p in small.values()} == {"WAV"}
    monkeypatch.setattr(audio_io, "WAV_LIMIT", 100_000)
    big = sep.separate_file(source, tmp_path / "b")
    assert {sf.info(str(p)).format for p in big.values()} == {"RF64"}
    vocals, _ = sf.read(str(big["vocals"]), dtype="float32", always_2d=True)
    accomp, _ = sf.read(str(big["accompaniment"]), dtype="float32", always_2d=True)
    np.testing.assert_allclose(vocals + accomp, audio.T, atol=1e-6)
    assert np.array_equal(vocals, sf.read(str(small["vocals"]), dtype="float32", always_2d=True)[0])
