"""Source activity detection (spec §4): which 8 s windows of a stem are salient.

Windows of 8 s with 50 % overlap (a trailing partial window is dropped), each split into
10 chunks of 0.8 s. Per channel, a chunk's RMS (an exact 0 counts as 1e-5) is compared with
the threshold ``max(15 % quantile of the window's 10 chunk RMS values, 1e-3)``; the window is
salient when more than half of its chunks exceed the threshold in every channel.

:func:`build_index` runs this over MUSDB18 per subset and stem and writes the index that the
training datasets sample from; it resumes where an interrupted run stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bsmamba2.data.musdb import SAMPLE_RATE, STEMS, DatasetError, list_tracks
from bsmamba2.fileio import atomic_write

WINDOW_SECONDS = 8.0
CHUNKS_PER_WINDOW = 10
QUANTILE = 0.15
MIN_THRESHOLD = 1e-3
ZERO_RMS = 1e-5
INDEX_VERSION = 1


def salient_windows(audio: np.ndarray, window: int = int(WINDOW_SECONDS * SAMPLE_RATE)) -> list[int]:
    """Start samples of the salient windows of ``audio`` ``(channels, samples)``.

    ``window`` must be a multiple of 20 samples (10 chunks, hop of half a window).
    """
    if window % (2 * CHUNKS_PER_WINDOW):
        raise ValueError(f"window {window} is not a multiple of {2 * CHUNKS_PER_WINDOW} samples")
    audio = np.asarray(audio)
    if audio.ndim != 2:
        raise ValueError(f"expected (channels, samples), got shape {audio.shape}")
    chunk = window // CHUNKS_PER_WINDOW
    hop_chunks = CHUNKS_PER_WINDOW // 2  # 50 % overlap = 5 chunks
    n_windows = (audio.shape[1] - window) // (hop_chunks * chunk) + 1 if audio.shape[1] >= window else 0
    if n_windows == 0:
        return []
    # The windows' chunks lie on one 0.8 s grid: compute every chunk's RMS once.
    n_chunks = (n_windows - 1) * hop_chunks + CHUNKS_PER_WINDOW
    grid = audio[:, : n_chunks * chunk].astype(np.float64).reshape(audio.shape[0], n_chunks, chunk)
    rms = np.sqrt(np.mean(grid**2, axis=-1))
    rms[rms == 0] = ZERO_RMS
    starts = np.arange(n_windows) * hop_chunks
    per_window = rms[:, starts[:, None] + np.arange(CHUNKS_PER_WINDOW)]  # (channels, windows, 10)
    threshold = np.maximum(np.quantile(per_window, QUANTILE, axis=-1, keepdims=True), MIN_THRESHOLD)
    active = (per_window > threshold).sum(axis=-1) > CHUNKS_PER_WINDOW // 2  # (channels, windows)
    keep = np.flatnonzero(active.all(axis=0))
    return [int(w) * hop_chunks * chunk for w in keep]


def _params(window: int) -> dict[str, Any]:
    return {
        "window": window,
        "hop": window // 2,
        "chunks": CHUNKS_PER_WINDOW,
        "quantile": QUANTILE,
        "min_threshold": MIN_THRESHOLD,
        "sample_rate": SAMPLE_RATE,
    }


def default_index_path(root: str | os.PathLike) -> Path:
    """Where ``bsmamba2 prepare`` writes the index by default: inside the dataset root."""
    return Path(root) / "bsmamba2_sad.json"


def write_json_atomic(data: Any, path: Path) -> None:
    """Write ``data`` as JSON, atomically (a killed ``prepare`` leaves the previous index intact)."""
    atomic_write(path, lambda f: f.write(json.dumps(data).encode()))


def load_index(path: str | os.PathLike) -> dict[str, Any]:
    """Read an index written by :func:`build_index`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no SAD index; run `bsmamba2 prepare --musdb ROOT` first")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable SAD index ({exc})") from None
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION:
        raise DatasetError(f"{path}: not a bsmamba2 SAD index (version {INDEX_VERSION}); run prepare again")
    return index


def build_index(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    subsets: Sequence[str] = ("train", "valid"),
    is_wav: bool = True,
    window_seconds: float = WINDOW_SECONDS,
    progress: bool = True,
) -> Path:
    """Compute the salient windows of every stem of every track of ``subsets``; returns the index path.

    The index is rewritten atomically after each track, and a rerun skips the tracks it has.
    Layout: ``{"subsets": {subset: {track: {"length": n, "windows": {stem: [start, ...]}}}}}``.
    """
    out = Path(out) if out is not None else default_index_path(root)
    window = round(window_seconds * SAMPLE_RATE)
    if window <= 0 or window % (2 * CHUNKS_PER_WINDOW):
        raise DatasetError(
            f"window of {window_seconds} s = {window} samples: need a positive multiple of 20 samples"
        )
    params = _params(window)
    index: dict[str, Any] = {"version": INDEX_VERSION, "params": params, "is_wav": is_wav, "subsets": {}}
    if out.exists():
        old = load_index(out)
        if old.get("params") != params or old.get("is_wav") != is_wav:
            raise DatasetError(f"{out}: made with other settings; delete it or choose another --out")
        index = old
    for subset in subsets:
        tracks = list_tracks(root, subset, is_wav=is_wav)
        if not tracks:
            raise DatasetError(f"{root}: no tracks in subset {subset!r}")
        done = index["subsets"].setdefault(subset, {})
        todo = [t for t in tracks if t.name not in done]
        for track in tqdm(todo, desc=f"SAD {subset}", unit="track", disable=not progress):
            windows = {stem: salient_windows(track.read(stem), window) for stem in STEMS}
            done[track.name] = {"length": track.length, "windows": windows}
            write_json_atomic(index, out)
    write_json_atomic(index, out)
    return out
