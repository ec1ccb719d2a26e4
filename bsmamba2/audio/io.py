"""Audio files in and out, block by block, so hour-long files never sit in memory whole.

Reading goes through soundfile (wav, flac, ogg, mp3, aiff, ...); anything libsndfile does
not know (m4a, aac, opus, wma, video containers) is decoded by the ``ffmpeg`` binary when it
is installed, streamed through a pipe. Every problem with an input is an :class:`AudioError`
with a one-line message naming the file. Writing goes through libsndfile too: WAV, FLAC, and
the lossy MP3 (LAME), Ogg Vorbis and Opus, at a chosen bitrate; a libsndfile built without
one of these encoders (MP3 needs 1.1) hands it to ``ffmpeg``, fed through a pipe. Writing is atomic
(:mod:`bsmamba2.fileio`): a hidden temporary file in the destination folder, renamed over the
final name only once complete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf

from bsmamba2.errors import BSMamba2Error
from bsmamba2.fileio import WriteError, atomic_path, write_error

BLOCK = 1 << 16  # samples per block read (~1.5 s at 44.1 kHz)
FORMATS = ("wav", "flac", "mp3", "ogg", "opus")
BIT_DEPTHS = ("16", "24", "float")
AUDIO_SUFFIXES = frozenset(  # what `separate` looks for in folders and `serve` accepts
    {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".wma"}
    | {".mp4", ".mkv", ".webm", ".mka", ".caf", ".w64", ".wv", ".ape"}
)
_SUBTYPES = {"16": "PCM_16", "24": "PCM_24", "float": "FLOAT"}
LOSSY = {"mp3": "MPEG_LAYER_III", "ogg": "VORBIS", "opus": "OPUS"}
"""The lossy formats and their libsndfile codec (subtype); ``ogg`` is Vorbis."""
_CONTAINERS = {"MPEG_LAYER_III": "MP3", "VORBIS": "OGG", "OPUS": "OGG"}
_CODEC_FORMATS = {subtype: fmt for fmt, subtype in LOSSY.items()}
_LABELS = {
    "PCM_16": "16-bit", "PCM_24": "24-bit",
    "MPEG_LAYER_III": "MP3", "VORBIS": "Vorbis", "OPUS": "Opus",
}
SAMPLE_RATES = {
    "mp3": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
    "opus": (8000, 12000, 16000, 24000, 48000),
}
"""The only rates these codecs store (libsndfile refuses others)."""
DEFAULT_BITRATES = {"mp3": 320, "opus": 256}
"""kbps of all channels together: MP3 constant bitrate, Opus's (variable) target."""


class AudioError(BSMamba2Error):
    """Unreadable, empty, NaN-carrying or unsupported audio; the message names the file."""


class TruncatedAudioWarning(UserWarning):
    """The file holds less audio than its header declares (an interrupted copy or download);
    what is there is used."""


def _truncation_warning(path: Path, declared: int, present: int, samplerate: int) -> None:
    warnings.warn(
        f"{path}: truncated: the header declares {declared / samplerate:.1f} s, the file holds "
        f"{present / samplerate:.1f} s; using what is there",
        TruncatedAudioWarning,
        stacklevel=3,
    )


def declared_wav_frames(path: Path) -> int | None:
    """The frame count a RIFF or RF64 WAV header declares, or None when it declares none (a
    streamed WAV) or is not a WAV. libsndfile reports the frames actually present instead,
    so a truncated file would otherwise pass unnoticed."""
    with path.open("rb") as f:
        head = f.read(12)
        if head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None
        block_align = data64 = None
        for _ in range(64):  # chunks before "data": fmt, ds64, LIST, fact, ...
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if name == b"data":
                if head[:4] == b"RF64" and size == 0xFFFFFFFF:
                    size = data64
                if not block_align or size in (None, 0, 0xFFFFFFFF):
                    return None
                return size // block_align
            if name not in (b"fmt ", b"ds64"):
                f.seek(size + size % 2, 1)  # chunks are padded to even sizes
                continue
            body = f.read(size + size % 2)
            if name == b"fmt " and len(body) >= 14:
                block_align = int.from_bytes(body[12:14], "little")
            elif name == b"ds64" and len(body) >= 16:
                data64 = int.from_bytes(body[8:16], "little")
    return None


_decoder_messages = False


def show_decoder_messages(show: bool = True) -> None:
    """Let the decoders inside libsndfile print to stderr (``--verbose``); off by default."""
    global _decoder_messages
    _decoder_messages = show


@contextmanager
def _quiet_decoder() -> Iterator[None]:
    """libmpg123, libsndfile's MP3 decoder, prints notes such as "Note: Illegal
    Audio-MPEG-Header ... Trying to resync" straight to file descriptor 2 (no Python
    stream to redirect), for damage it then decodes around; such notes would break the
    one-line-per-problem output. So fd 2 points to /dev/null during each call into it."""
    if _decoder_messages:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to protect
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _one_line(text: object) -> str:
    """The last non-empty line of a tool's message (where libsndfile and ffmpeg put the cause)."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def check_channels(channels: int, where: str) -> None:
    """Only mono and stereo: the model is a stereo model and 5.1 has no obvious mapping."""
    if channels < 1:
        raise AudioError(f"{where}: no audio channels")
    if channels > 2:
        raise AudioError(
            f"{where}: {channels} channels; only mono and stereo are supported (downmix it first)"
        )


def check_finite(block: np.ndarray, where: str, offset: int, samplerate: int) -> None:
    """(channels, n) ``block`` starting at sample ``offset``: NaN or infinite samples would
    silently poison every segment they touch."""
    if not np.isfinite(block).all():
        bad = int(np.flatnonzero(~np.isfinite(block).all(axis=0))[0]) + offset
        raise AudioError(f"{where}: NaN or infinite sample at {bad / samplerate:.3f} s")


def pcm_to_float(audio: np.ndarray) -> np.ndarray:
    """float32 samples of an array: floats as they are, integer PCM scaled to [-1, 1) as
    soundfile reads files (int16 / 2**15, int32 / 2**31, int8 / 2**7, uint8 around 128).
    Other types have no agreed full scale (int64 could be anything) and are refused."""
    if audio.dtype.kind == "f":
        return audio.astype(np.float32, copy=False)
    if audio.dtype in (np.int8, np.int16, np.int32):
        return (audio / float(2 ** (8 * audio.dtype.itemsize - 1))).astype(np.float32)
    if audio.dtype == np.uint8:
        return ((audio.astype(np.float32) - 128) / 128).astype(np.float32)
    raise AudioError(
        f"audio: samples of type {audio.dtype} have no agreed full scale; pass float "
        "(full scale 1.0) or int8, uint8, int16 or int32 PCM"
    )


class AudioSource:
    """An opened input: ``samplerate``, ``channels``, ``frames`` (None when unknown up front)
    and :meth:`blocks`, which yields validated float32 arrays shaped (channels, n).
    """

    def __init__(self, path: Path, samplerate: int, channels: int, frames: int | None) -> None:
        self.path = path
        self.samplerate = samplerate
        self.channels = channels
        self.frames = frames
        check_channels(channels, str(path))
        if frames == 0:
            raise AudioError(f"{path}: zero-length audio (0 samples)")

    start = 0  # the first frame decoded (a preview's --start)
    limit: int | None = None  # the most frames decoded (a preview's --duration)

    def select(self, start: float = 0.0, duration: float | None = None) -> None:
        """Decode only ``duration`` seconds (None: to the end) from ``start`` seconds on, a
        preview: the decoder seeks there, nothing before it is decoded. ``frames`` becomes
        the section's length."""
        if not (math.isfinite(start) and start >= 0):
            raise AudioError(f"{self.path}: --start must be 0 or more seconds, got {start:g}")
        if duration is not None and not (math.isfinite(duration) and duration > 0):
            raise AudioError(f"{self.path}: --duration must be more than 0 seconds, got {duration:g}")
        self.start = round(start * self.samplerate)
        if self.frames is not None:
            if self.start >= self.frames:
                length = self.frames / self.samplerate
                raise AudioError(f"{self.path}: --start {start:g} s is past the end ({length:.1f} s)")
            self.frames -= self.start
        if duration is not None:
            self.limit = max(1, round(duration * self.samplerate))
            self.frames = self.limit if self.frames is None else min(self.frames, self.limit)

    exact_length = False  # whether ``frames`` is a count from a header (not an estimate)

    def _raw_blocks(self, blocksize: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def blocks(self, blocksize: int = BLOCK) -> Iterator[np.ndarray]:
        """(channels, n) float32 blocks; errors on NaN/inf samples and on no samples at all,
        a :class:`TruncatedAudioWarning` when decoding stops 1 % short of the declared length."""
        done = 0
        for block in self._raw_blocks(blocksize):
            if self.limit is not None:
                block = block[: self.limit - done]
            if not len(block):
                continue
            block = np.ascontiguousarray(block.T)
            check_finite(block, str(self.path), done, self.samplerate)
            done += block.shape[1]
            yield block
            if done == self.limit:
                break
        if done == 0:
            after = f" after {self.start / self.samplerate:g} s" if self.start else ""
            raise AudioError(f"{self.path}: zero-length audio (no samples decoded{after})")
        if self.exact_length and self.frames and done < 0.99 * self.frames:
            _truncation_warning(self.path, self.frames, done, self.samplerate)

    @property
    def duration(self) -> float | None:
        return None if self.frames is None else self.frames / self.samplerate

    def close(self) -> None:
        """Release the file or the decoder process."""

    def __enter__(self) -> AudioSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _SoundFileSource(AudioSource):
    exact_length = True

    def __init__(self, path: Path, handle: sf.SoundFile) -> None:
        self._handle = handle
        try:
            super().__init__(path, handle.samplerate, handle.channels, handle.frames)
        except AudioError:
            handle.close()
            raise
        declared = declared_wav_frames(path) if handle.format in ("WAV", "WAVEX", "RF64") else None
        if declared is not None and declared > handle.frames:
            _truncation_warning(path, declared, handle.frames, handle.samplerate)

    def _raw_blocks(self, blocksize: int) -> Iterator[np.ndarray]:
        with _quiet_decoder():
            self._handle.seek(self.start)
        try:
            while True:
                with _quiet_decoder():
                    block = self._handle.read(blocksize, dtype="float32", always_2d=True)
                if not len(block):
                    return
                yield block
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"{self.path}: decoding failed ({_one_line(exc)})") from None

    def close(self) -> None:
        self._handle.close()


class _FFmpegSource(AudioSource):
    """Decoded by ffmpeg to 32-bit float PCM on a pipe; the length is only an estimate."""

    def __init__(self, path: Path, samplerate: int, channels: int, duration: float | None) -> None:
        frames = None if duration is None else max(1, round(duration * samplerate))
        super().__init__(path, samplerate, channels, frames)
        self._proc: subprocess.Popen | None = None

    def _raw_blocks(self, blocksize: int) -> Iterator[np.ndarray]:
        cmd = ["ffmpeg", "-nostdin", "-v", "error"]
        if self.start:  # before -i: ffmpeg seeks in the input, then decodes from there
            cmd += ["-ss", f"{self.start / self.samplerate:.6f}"]
        if self.limit is not None:
            cmd += ["-t", f"{self.limit / self.samplerate:.6f}"]
        cmd += ["-i", str(self.path)]
        cmd += ["-map", "0:a:0", "-f", "f32le", "-acodec", "pcm_f32le", "-"]
        with tempfile.TemporaryFile() as errors:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors)
            stride = 4 * self.channels
            pending = b""
            while chunk := self._proc.stdout.read(blocksize * stride):
                pending += chunk
                usable = len(pending) - len(pending) % stride
                yield np.frombuffer(pending[:usable], np.float32).reshape(-1, self.channels)
                pending = pending[usable:]
            if self._proc.wait() != 0:
                errors.seek(0)
                message = _one_line(errors.read().decode(errors="replace"))
                raise AudioError(f"{self.path}: ffmpeg could not decode it ({message})")

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc is not None:
            self._proc.stdout.close()


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def _ffprobe(path: Path) -> tuple[int, int, float | None]:
    cmd = ["ffprobe", "-v", "error", "-select_streams", "a:0", "-of", "json", str(path)]
    cmd += ["-show_entries", "stream=sample_rate,channels,duration:format=duration"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    info = json.loads(proc.stdout or "{}") if proc.returncode == 0 else {}
    streams = info.get("streams") or []
    if not streams:
        reason = _one_line(proc.stderr) if proc.returncode else "no audio stream"
        raise AudioError(f"{path}: not a readable audio file ({reason})")
    stream = streams[0]
    duration = stream.get("duration") or info.get("format", {}).get("duration")
    duration = float(duration) if duration not in (None, "N/A") else None
    return int(stream["sample_rate"]), int(stream["channels"]), duration


def open_audio(path: str | os.PathLike, start: float = 0.0, duration: float | None = None) -> AudioSource:
    """Open an input for block-wise reading (soundfile first, then ffmpeg if installed);
    ``start`` and ``duration`` seconds select a part (:meth:`AudioSource.select`)."""
    source = _open(Path(path))
    if start or duration is not None:
        try:
            source.select(start, duration)
        except AudioError:
            source.close()
            raise
    return source


def _open(path: Path) -> AudioSource:
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty (0 bytes)")
    try:
        with _quiet_decoder():
            handle = sf.SoundFile(path)
        return _SoundFileSource(path, handle)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        reason = _one_line(getattr(exc, "error_string", "") or exc)
    if not ffmpeg_available():
        raise AudioError(f"{path}: not a readable audio file ({reason}); install ffmpeg for more formats")
    samplerate, channels, duration = _ffprobe(path)
    return _FFmpegSource(path, samplerate, channels, duration)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A whole file as float32 (channels, samples) and its sample rate (for short files)."""
    with open_audio(path) as source:
        return np.concatenate(list(source.blocks()), axis=1), source.samplerate


def subtype_for(fmt: str, bit_depth: str | None) -> str:
    """soundfile subtype for ``--format``/``--bit-depth``; default float WAV, 24-bit FLAC, and
    the codec of a lossy format (which has no bit depth)."""
    if fmt not in FORMATS:
        raise AudioError(f"unknown output format {fmt!r} (choose from {', '.join(FORMATS)})")
    if fmt in LOSSY:
        if bit_depth is not None:
            raise AudioError(f"{fmt} has no bit depth: drop --bit-depth (or use --format wav or flac)")
        return LOSSY[fmt]
    depth = bit_depth or ("float" if fmt == "wav" else "24")
    if depth not in BIT_DEPTHS:
        raise AudioError(f"unknown bit depth {depth!r} (choose from {', '.join(BIT_DEPTHS)})")
    if fmt == "flac" and depth == "float":
        raise AudioError("FLAC stores integers only: use --bit-depth 16 or 24, or --format wav")
    return _SUBTYPES[depth]


WAV_LIMIT = 2**32 - 1
"""Bytes: RIFF's 32-bit size fields; RF64 has 64-bit ones."""
_SAMPLE_BYTES = {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}


def wav_container(fmt: str, seconds: float | None, rate: int, channels: int, subtype: str) -> str | None:
    """``"RF64"`` for a WAV output that could outgrow RIFF's 4 GB limit, else None (the suffix's format).

    ``seconds`` of output at ``rate``: the input's length, an estimate for ffmpeg inputs, so
    it gets 1 % headroom plus 1 MiB for the headers; unknown (None) counts as too long. A
    3.5-hour float stereo file at 44.1 kHz (4.4 GB) is RF64, a 3-hour one (3.8 GB) a WAV.
    """
    if fmt != "wav":
        return None
    if seconds is None:
        return "RF64"
    data = math.ceil(seconds * rate * 1.01) * channels * _SAMPLE_BYTES[subtype]
    return "RF64" if data + (1 << 20) > WAV_LIMIT else None


def output_rate(fmt: str, input_rate: int, requested: int | None = None) -> int:
    """The sample rate of an output: ``requested`` (``--sample-rate``) or the input's; for MP3
    and Opus, which store only some rates, the next one up from the input's (Opus: 48 kHz for
    44.1 kHz), and a ``requested`` one they cannot store is an error."""
    allowed = SAMPLE_RATES.get(fmt)
    if requested is not None:
        if requested <= 0:
            raise AudioError(f"invalid output sample rate {requested}")
        if allowed and requested not in allowed:
            rates = ", ".join(str(r) for r in allowed)
            raise AudioError(f"{fmt} cannot store {requested} Hz; choose --sample-rate from {rates}")
        return requested
    if not allowed or input_rate in allowed:
        return input_rate
    return next((r for r in allowed if r >= input_rate), allowed[-1])


def compression_level(fmt: str, bitrate: int | None, samplerate: int, channels: int) -> float | None:
    """libsndfile's compression level (0 best .. 1 smallest) for ``bitrate`` kbps (all channels
    together; None: :data:`DEFAULT_BITRATES`). libsndfile maps the level linearly onto the
    codec's range: MP3 32-320 kbps (8-160 below 32 kHz, 8-64 below 16 kHz), truncated to
    whole kbps; Opus 6-256 kbps per channel. Vorbis is quality-based: no bitrate."""
    if fmt == "ogg" or fmt not in LOSSY:
        if bitrate is not None:
            why = " (Vorbis is quality-based)" if fmt == "ogg" else ""
            raise AudioError(f"--bitrate applies to mp3 and opus, not {fmt}{why}")
        return None
    kbps = DEFAULT_BITRATES[fmt] if bitrate is None else bitrate
    if fmt == "mp3":
        low, high = (32, 320) if samplerate >= 32000 else (8, 160) if samplerate >= 16000 else (8, 64)
    else:
        low, high = 6 * channels, 256 * channels
    if not low <= kbps <= high:
        where = f"{fmt} at {samplerate} Hz, {channels} channel(s)"
        raise AudioError(f"{where}: --bitrate must be {low}-{high} kbps, got {kbps}")
    if fmt == "mp3":  # half a kbps up, so libsndfile's truncation lands on the asked value
        return min(1.0, max(0.0, (high - kbps - 0.5) / (high - low)))
    return 1.0 - (kbps * 1000 / channels - 6000) / 250000


_ERRNOS = {os.strerror(code).lower(): code for code in
           (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG, errno.EIO)}


def _libsndfile_failure(exc: Exception, path: Path, handle: sf.SoundFile | None = None) -> BSMamba2Error:
    """libsndfile's error as one line naming ``path``: a :class:`~bsmamba2.fileio.WriteError`
    when the system refused (soundfile's message is then only "System error."; libsndfile
    keeps the system's reason, "System error : No space left on device.", for
    ``sf_strerror``, of the file or, for a failed open, global), else an :class:`AudioError`."""
    detail = ""
    with contextlib.suppress(AttributeError, TypeError):  # soundfile's cffi handles, if present
        c_handle = handle._file if handle is not None and handle._file is not None else sf._ffi.NULL
        detail = sf._ffi.string(sf._snd.sf_strerror(c_handle)).decode(errors="replace")
    if detail.startswith("System error : "):
        reason = detail.removeprefix("System error : ").rstrip(".").lower()
        return WriteError(f"{reason} writing {path}", _ERRNOS.get(reason))
    return AudioError(f"{path}: cannot write ({_one_line(getattr(exc, 'error_string', '') or exc)})")


_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)  # Linux and the BSDs; not macOS or Windows


class AudioWriter:
    """Appends (channels, n) blocks to an open output; made by :func:`audio_writer`.

    Integer and lossy subtypes are clipped to full scale; :attr:`peak` records the largest
    absolute sample seen so the caller can warn about it (float files keep every value as is).
    A failing write (a full disk, ...) is a :class:`~bsmamba2.fileio.WriteError`.

    libsndfile syncs a file to disk when it closes it, and waits for all of its data then. With
    ``written_to`` (the path libsndfile writes, where the system has ``posix_fadvise``) the
    system is told after each block that the data written so far is not needed in memory:
    Linux then starts writing it to disk at once, without waiting (as PostgreSQL's flush
    hints), so that the sync at the end waits only for the last block.
    """

    def __init__(
        self, handle: sf.SoundFile, path: Path, subtype: str, written_to: Path | None = None
    ) -> None:
        self._handle, self.path, self.subtype = handle, path, subtype
        self.peak = 0.0
        self._closed = False
        self._hinted = os.open(written_to, os.O_RDONLY) if written_to is not None and _DONTNEED else None

    @property
    def clipped(self) -> bool:
        return self.subtype != "FLOAT" and self.peak > 1.0

    def write(self, block: np.ndarray) -> None:
        """Append (channels, n) samples."""
        if block.size:
            self.peak = max(self.peak, float(block.max()), -float(block.min()))
        self._emit(interleaved(block, clip=self.subtype != "FLOAT"))
        if self._hinted is not None:
            with contextlib.suppress(OSError):  # a hint: the data is written either way
                os.posix_fadvise(self._hinted, 0, 0, _DONTNEED)

    def _emit(self, frames: np.ndarray) -> None:
        """Append (n, channels) C-ordered frames."""
        try:
            self._handle.write(frames)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise _libsndfile_failure(exc, self.path, self._handle) from None

    def abort(self) -> None:
        """Give up the file after an error (the first error is the one reported)."""
        with contextlib.suppress(Exception):
            self._handle.close()
        self._release()

    def close(self) -> None:
        """Finish the file (libsndfile writes the header's sizes now, and syncs it to disk).
        Once only: the writing thread may finish it before its context renames it."""
        if not self._closed:
            self._closed = True
            try:
                self._finish()
            finally:
                self._release()

    def _release(self) -> None:
        if self._hinted is not None:
            os.close(self._hinted)
            self._hinted = None

    def _finish(self) -> None:
        try:
            self._handle.close()
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise _libsndfile_failure(exc, self.path) from None


def interleaved(block: np.ndarray, clip: bool = False) -> np.ndarray:
    """(channels, n) samples as the (n, channels) C-ordered frames a file stores, clipped to
    full scale with ``clip``: channel by channel, as numpy's transposing copy of a whole block
    of seconds is several times slower than these strided copies."""
    frames = np.empty(block.shape[::-1], block.dtype)
    for channel, samples in enumerate(block):
        if clip:
            np.clip(samples, -1.0, 1.0, out=frames[:, channel])
        else:
            frames[:, channel] = samples
    return frames


FFMPEG_ENCODERS = {
    "MPEG_LAYER_III": ("libmp3lame", "mp3"),
    "VORBIS": ("libvorbis", "ogg"),
    "OPUS": ("libopus", "ogg"),
}
"""ffmpeg's encoder and container for each lossy codec, where libsndfile lacks it."""


class _FfmpegWriter(AudioWriter):
    """A lossy output encoded by the ``ffmpeg`` program, for a libsndfile built without that
    encoder (MP3 needs libsndfile 1.1, Opus 1.0.29): float32 samples on its stdin."""

    def __init__(self, tmp: Path, path: Path, samplerate: int, channels: int, subtype: str,
                 bitrate: int | None) -> None:
        encoder, container = FFMPEG_ENCODERS[subtype]
        fmt = _CODEC_FORMATS[subtype]
        kbps = bitrate or DEFAULT_BITRATES.get(fmt)
        quality = ["-b:a", f"{kbps}k"] if kbps else ["-q:a", "5"]  # Vorbis: by quality, as libsndfile
        command = [
            "ffmpeg", "-nostdin", "-v", "error", "-y",
            "-f", "f32le", "-ar", str(samplerate), "-ac", str(channels), "-i", "pipe:0",
            "-c:a", encoder, *quality, "-f", container, str(tmp),
        ]
        self._messages = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close() or abort())
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=self._messages)
        except OSError as exc:
            self._messages.close()
            raise AudioError(f"{path}: cannot start ffmpeg to write {fmt} ({exc})") from None
        super().__init__(process, path, subtype)

    def _failure(self) -> BSMamba2Error:
        self._handle.wait()
        self._messages.seek(0)
        said = _one_line(self._messages.read().decode(errors="replace"))
        message = said or f"exit code {self._handle.returncode}"
        for reason, code in _ERRNOS.items():
            if reason in message.lower():
                return WriteError(f"{reason} writing {self.path}", code)
        return AudioError(f"{self.path}: ffmpeg could not write it ({message})")

    def _emit(self, frames: np.ndarray) -> None:
        try:
            self._handle.stdin.write(frames.astype("<f4", copy=False).tobytes())
        except OSError:  # ffmpeg stopped (a full disk, a missing encoder): it says why
            raise self._failure() from None

    def _finish(self) -> None:
        with contextlib.suppress(OSError):  # ffmpeg gone: its exit code says why
            self._handle.stdin.close()
        try:
            if self._handle.wait() != 0:
                raise self._failure()
        finally:
            self._messages.close()

    def abort(self) -> None:
        self._handle.kill()
        self._handle.wait()
        self._messages.close()


def libsndfile_encodes(subtype: str) -> bool:
    """Whether this libsndfile writes a lossy codec (MP3 since 1.1, Opus since 1.0.29)."""
    return subtype not in _CONTAINERS or subtype in sf.available_subtypes(_CONTAINERS[subtype])


def _encoder_missing(path: Path, subtype: str) -> AudioError:
    fmt = _CODEC_FORMATS[subtype]
    return AudioError(
        f"{path}: this libsndfile ({sf.__libsndfile_version__}) cannot write {fmt} and ffmpeg is not "
        "installed: install ffmpeg or a newer libsndfile, or use --format flac or wav"
    )


@contextmanager
def audio_writer(
    path: str | os.PathLike,
    samplerate: int,
    channels: int,
    subtype: str = "FLOAT",
    container: str | None = None,
    bitrate: int | None = None,
) -> Iterator[AudioWriter]:
    """Block-wise, atomic output: written to a hidden ``.part`` file beside ``path``, which
    replaces ``path`` only when the block completes; on any exception it is removed and
    ``path`` is left as it was. The format follows the codec of a lossy ``subtype`` (MP3,
    Ogg), else the suffix (``.wav``, ``.flac``) unless ``container`` names a libsndfile one
    (``RF64`` for WAV files beyond 4 GB). ``bitrate`` kbps for MP3 (constant) and Opus
    (:func:`compression_level`).
    """
    path = Path(path)
    codec = _CODEC_FORMATS.get(subtype)
    level = compression_level(codec, bitrate, samplerate, channels) if codec else None
    if codec and not libsndfile_encodes(subtype) and not ffmpeg_available():
        raise _encoder_missing(path, subtype)
    with atomic_path(path, suffix=".part") as tmp:
        writer = None
        if not codec or libsndfile_encodes(subtype):
            try:
                writer = _libsndfile_writer(tmp, path, samplerate, channels, subtype, container, level)
            except AudioError:  # the format refused (not the disk): ffmpeg may still write it
                if not codec or not ffmpeg_available():
                    raise
        if writer is None:
            writer = _FfmpegWriter(tmp, path, samplerate, channels, subtype, bitrate)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise
        writer.close()


def _libsndfile_writer(
    tmp: Path, path: Path, samplerate: int, channels: int, subtype: str, container: str | None,
    level: float | None,
) -> AudioWriter:
    """An open libsndfile output at ``tmp`` (errors name ``path``)."""
    codec = _CODEC_FORMATS.get(subtype)
    fmt = container or _CONTAINERS.get(subtype) or path.suffix.lstrip(".").upper() or "WAV"
    options = {"compression_level": level, "bitrate_mode": "CONSTANT" if codec == "mp3" else None}
    try:
        handle = sf.SoundFile(tmp, "w", samplerate, channels, subtype=subtype, format=fmt, **options)
    except sf.LibsndfileError as exc:
        raise _libsndfile_failure(exc, path) from None
    except (RuntimeError, ValueError) as exc:
        raise AudioError(f"{path}: cannot write ({_one_line(exc)})") from None
    try:
        return AudioWriter(handle, path, subtype, written_to=tmp)
    except OSError as exc:  # the descriptor for the hints
        handle.close()
        raise write_error(exc, path) from None


def peak_warning(writer: AudioWriter) -> str:
    """The message for a clipped integer or lossy output, naming its peak."""
    lossy = writer.subtype in _CODEC_FORMATS
    return (
        f"{writer.path}: peak {writer.peak:.3f} ({20 * math.log10(writer.peak):+.2f} dBFS) "
        f"exceeds full scale and was clipped in the {_LABELS[writer.subtype]} file; "
        + ("use --format wav (float) to keep it" if lossy else "use --bit-depth float to keep it")
    )
