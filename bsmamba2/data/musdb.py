"""MUSDB18-HQ (wav folders) and MUSDB18 (``.stem.mp4``) tracks, for training and evaluation.

musdb's dataset description gives the file names and the official train / validation split
(14 validation songs). WAV folders are listed here from that description, the way musdb
lists them, so MUSDB18-HQ needs no ffmpeg (musdb itself probes every file with ffprobe); wav
stems are read with soundfile (random access to a window without decoding the file).
``.stem.mp4`` files are listed and read through musdb and its ffmpeg reader (slower: convert
them with ``musdbconvert`` for long trainings).

Subsets: ours are ``train`` (86 songs), ``valid`` (musdb's 14 validation songs, also in the
``train`` folder) and ``test`` (50); musdb's and museval's selection (``subsets`` with an
optional ``split``) maps onto them with :func:`subsets_for`, and :attr:`Track.folder` is the
folder a song lives in, which museval's output layout uses.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

from bsmamba2.errors import BSMamba2Error, require, require_extra

SAMPLE_RATE = 44100
#: The four MUSDB18 sources, in the order the mixing dataset sums them.
STEMS: tuple[str, ...] = ("vocals", "drums", "bass", "other")
#: Our subset names: musdb's ``train`` split into ``train`` (86 songs) and ``valid`` (14), and ``test``.
SUBSETS: tuple[str, ...] = ("train", "valid", "test")
#: What MUSDB18 mixes into its ``accompaniment`` target (musdb's ``mus.yaml``): all but the vocals.
ACCOMPANIMENT_SOURCES: tuple[str, ...] = ("drums", "bass", "other")


def accompaniment(stems: Mapping[str, np.ndarray]) -> np.ndarray:
    """MUSDB18's accompaniment of ``stems`` (``(channels, samples)`` arrays): drums + bass +
    other, summed in float64 as musdb sums its targets."""
    return np.sum([np.asarray(stems[s], np.float64) for s in ACCOMPANIMENT_SOURCES], axis=0)


def subsets_for(subset: str, split: str | None = None) -> tuple[str, ...]:
    """Our subsets for musdb's selection: ``test``; ``train`` (all 100 songs: ``train`` and
    ``valid``); ``train`` with ``split`` ``train`` or ``valid`` (that part only)."""
    if subset not in ("train", "test"):
        raise DatasetError(f"unknown MUSDB18 subset {subset!r}; choose test or train")
    if split is not None and subset != "train":
        raise DatasetError("--split selects part of the train subset: use it with --subset train")
    if split not in (None, "train", "valid"):
        raise DatasetError(f"unknown split {split!r}; choose train or valid")
    if subset == "test":
        return ("test",)
    return (split,) if split else ("train", "valid")


class DatasetError(BSMamba2Error):
    """A missing, incomplete or unreadable MUSDB18 folder or index."""


@dataclass
class Track:
    """One song: where its audio is and how long it is (in samples at 44.1 kHz)."""

    name: str
    subset: str
    length: int
    is_wav: bool
    paths: dict[str, str]  # "mixture" and every stem → file
    stem_ids: dict[str, int]  # stream index inside a .stem.mp4 (unused for wav)

    @property
    def folder(self) -> str:
        """``train`` or ``test``: where the song lives (``valid`` songs are in ``train``)."""
        return "test" if self.subset == "test" else "train"

    def read(self, stem: str, start: int = 0, frames: int | None = None) -> np.ndarray:
        """``stem`` ("mixture" or a source) as float32 ``(channels, frames)``, zero-padded past the end."""
        frames = self.length - start if frames is None else frames
        path = self.paths[stem]
        try:
            if self.is_wav:
                audio, rate = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
            else:
                audio, rate = _read_stem_mp4(path, self.stem_ids[stem], start, frames)
        except (RuntimeError, OSError, ValueError) as exc:
            raise DatasetError(f"cannot read {path}: {str(exc).strip().splitlines()[0]}") from None
        if rate != SAMPLE_RATE:
            raise DatasetError(f"{path}: sample rate {rate} Hz, MUSDB18 is {SAMPLE_RATE} Hz")
        if audio.shape[1] != 2:
            raise DatasetError(f"{path}: {audio.shape[1]} channels, MUSDB18 is stereo")
        audio = audio[:frames].T
        if audio.shape[1] < frames:
            audio = np.pad(audio, ((0, 0), (0, frames - audio.shape[1])))
        return np.ascontiguousarray(audio, dtype=np.float32)


def _read_stem_mp4(path: str, stem_id: int, start: int, frames: int) -> tuple[np.ndarray, int]:
    stempeg = require("stempeg")  # musdb's decoder (ffmpeg)
    return stempeg.read_stems(
        path,
        stem_id=stem_id,
        start=start / SAMPLE_RATE,
        duration=frames / SAMPLE_RATE,
        dtype=np.float32,
        ffmpeg_format="f32le",
    )


def _subset_folder(root: Path, subset: str) -> Path:
    if subset not in SUBSETS:
        raise DatasetError(f"unknown subset {subset!r}; choose from {', '.join(SUBSETS)}")
    folder = root / ("test" if subset == "test" else "train")
    if not folder.is_dir():
        raise DatasetError(f"{root}: no '{folder.name}' folder; is this a MUSDB18 root?")
    return folder


def musdb_setup() -> dict[str, Any]:
    """musdb's description of MUSDB18 (file names, stem ids, the 14 validation songs), read from
    its package data: importing musdb needs ffmpeg, which WAV folders do not."""
    require_extra("reading MUSDB18", "train", ("musdb",))
    spec = importlib.util.find_spec("musdb")
    path = Path(next(iter(spec.submodule_search_locations))) / "configs" / "mus.yaml"
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"cannot read musdb's dataset description {path}: {exc}") from None


def _wav_tracks(folder: Path, subset: str) -> list[Track]:
    """MUSDB18-HQ: one folder of WAV stems per song, listed as musdb lists them (sorted by
    name, the official validation split) but without musdb's ffprobe calls; hidden folders
    are skipped."""
    setup = musdb_setup()
    valid = set(setup["validation_tracks"])
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subset != "test":
        names = [n for n in names if (n in valid) == (subset == "valid")]
    files = {"mixture": setup["mixture"], **{s: setup["sources"][s] for s in STEMS}}
    tracks = []
    for name in names:
        paths = {key: str(folder / name / file) for key, file in files.items()}
        missing = [s for s in STEMS if not os.path.exists(paths[s])]
        if missing:
            missing_stems = ", ".join(missing)
            raise DatasetError(f"{folder / name}: incomplete MUSDB18 track, missing stems {missing_stems}")
        try:
            length = min(sf.info(paths[s]).frames for s in ("mixture", *STEMS))
        except (RuntimeError, OSError) as exc:
            message = str(exc).strip().splitlines()[0]
            raise DatasetError(f"cannot read MUSDB18 track {folder / name}: {message}") from None
        stem_ids = {key: setup["stem_ids"][key] for key in files}
        tracks.append(Track(name, subset, length, True, paths, stem_ids))
    return tracks


def _stem_tracks(root: Path, folder: Path, subset: str) -> list[Track]:
    """MUSDB18: ``.stem.mp4`` files, listed and measured by musdb (ffmpeg)."""
    musdb = require("musdb")
    try:
        db = musdb.DB(root=str(root), subsets=folder.name, split=None if subset == "test" else subset)
    except Exception as exc:  # ffprobe failing on a file: one line, not musdb's traceback
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise DatasetError(f"cannot read MUSDB18 in {folder}: {lines[-1]}") from None
    tracks = []
    for mt in db.tracks:
        missing = [s for s in STEMS if s not in mt.sources]
        if missing:
            raise DatasetError(f"{mt.name}: missing stems {', '.join(missing)}")
        paths = {"mixture": mt.path, **{s: mt.sources[s].path for s in STEMS}}
        stem_ids = {"mixture": mt.stem_id, **{s: mt.sources[s].stem_id for s in STEMS}}
        tracks.append(Track(mt.name, subset, int(mt.samples), False, paths, stem_ids))
    return tracks


def list_tracks(root: str | os.PathLike, subset: str, is_wav: bool = True) -> list[Track]:
    """The songs of ``subset`` (``train``, ``valid`` or ``test``) under a MUSDB18(-HQ) root."""
    root = Path(root)
    folder = _subset_folder(root, subset)
    return _wav_tracks(folder, subset) if is_wav else _stem_tracks(root, folder, subset)
