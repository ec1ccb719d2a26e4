"""Spectrogram pictures of a mixture and its stems, built while the audio streams past.

A :class:`SpectrogramSketch` keeps at most ``max_frames`` evenly spaced STFT frames of any
length of audio (it doubles its stride and drops every other frame when full), so a picture
of an hour-long file costs a few megabytes, not the whole signal.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bsmamba2.errors import require_extra
from bsmamba2.fileio import atomic_path


class SpectrogramSketch:
    """Magnitude spectrogram of a (channels, n) block stream, downmixed to mono."""

    def __init__(self, samplerate: int, n_fft: int = 2048, max_frames: int = 800) -> None:
        self.samplerate, self.n_fft, self.max_frames = samplerate, n_fft, max_frames
        self.stride = n_fft // 4
        self._window = np.hanning(n_fft).astype(np.float32)
        self._frames: list[np.ndarray] = []
        self._tail = np.zeros(0, np.float32)
        self._tail_pos = 0  # stream position of _tail[0]
        self._next = 0  # stream position of the next frame

    def _frame(self, samples: np.ndarray) -> np.ndarray:
        padded = np.zeros(self.n_fft, np.float32)
        padded[: len(samples)] = samples
        return np.abs(np.fft.rfft(padded * self._window)).astype(np.float32)

    def update(self, block: np.ndarray) -> None:
        """Take the next (channels, n) samples."""
        self._tail = np.concatenate([self._tail, block.mean(axis=0, dtype=np.float32)])
        while self._next + self.n_fft <= self._tail_pos + len(self._tail):
            start = self._next - self._tail_pos
            self._frames.append(self._frame(self._tail[start : start + self.n_fft]))
            self._next += self.stride
            if len(self._frames) > self.max_frames:
                self._frames = self._frames[::2]
                self.stride *= 2
                self._next = len(self._frames) * self.stride
        drop = min(self._next - self._tail_pos, len(self._tail))
        self._tail, self._tail_pos = self._tail[drop:], self._tail_pos + drop

    def magnitudes(self) -> tuple[np.ndarray, np.ndarray]:
        """(bins, frames) magnitudes and each frame's centre time in seconds."""
        frames = self._frames or [self._frame(self._tail[: self.n_fft])]
        times = (np.arange(len(frames)) * self.stride + self.n_fft / 2) / self.samplerate
        return np.stack(frames, axis=1), times


def save_spectrograms(sketches: dict[str, SpectrogramSketch], path: str | os.PathLike, title: str) -> Path:
    """One panel per signal (log frequency, dB relative to the loudest), written atomically."""
    require_extra("the spectrogram plot", "plot")
    import librosa.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mags = {name: sketch.magnitudes() for name, sketch in sketches.items()}
    ref = max(float(m.max()) for m, _ in mags.values()) or 1.0
    fig, axes = plt.subplots(len(mags), 1, figsize=(12, 2.6 * len(mags)), sharex=True, squeeze=False)
    sr = next(iter(sketches.values())).samplerate
    for ax, (name, (mag, times)) in zip(axes[:, 0], mags.items(), strict=True):
        db = 20 * np.log10(np.maximum(mag / ref, 10 ** (-90 / 20)))
        img = librosa.display.specshow(
            db, sr=sr, x_coords=times, x_axis="time", y_axis="log", ax=ax, vmin=-90, vmax=0
        )
        ax.set_title(name, loc="left")
        ax.label_outer()
    fig.colorbar(img, ax=axes[:, 0].tolist(), format="%+.0f dB", pad=0.01)
    fig.suptitle(title)
    try:
        with atomic_path(path, suffix=".part") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(path)
