"""Audio input/output (soundfile, ffmpeg fallback), validation and resampling (soxr)."""

from bsmamba2.audio.io import (
    AudioError,
    AudioSource,
    AudioWriter,
    TruncatedAudioWarning,
    audio_writer,
    check_channels,
    check_finite,
    open_audio,
    pcm_to_float,
    read_audio,
    subtype_for,
)
from bsmamba2.audio.resample import StreamResampler, resample

__all__ = [
    "AudioError",
    "AudioSource",
    "AudioWriter",
    "StreamResampler",
    "TruncatedAudioWarning",
    "audio_writer",
    "check_channels",
    "check_finite",
    "open_audio",
    "pcm_to_float",
    "read_audio",
    "resample",
    "subtype_for",
]
