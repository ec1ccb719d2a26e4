"""Tracks to evaluate: MUSDB18(-HQ) songs (listed and read by :mod:`bsmamba2.data.musdb`,
as for training), or folders of ``{track}/{stem}.wav``.

Audio is returned as ``(channels, samples)`` arrays, the convention of
:mod:`bsmamba2.evaluation.metrics` and of the Separator; references in float64, as musdb
hands them to museval.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bsmamba2.audio import open_audio, read_audio
from bsmamba2.data.musdb import (
    ACCOMPANIMENT_SOURCES,
    SAMPLE_RATE,
    STEMS,
    DatasetError,
    Track,
    accompaniment,
    list_tracks,
    subsets_for,
)
from bsmamba2.errors import BSMamba2Error


def read_stems(folder: Path, names: list[str] | None = None) -> tuple[dict[str, np.ndarray], int | None]:
    """The ``{stem}.wav`` files of ``folder`` (all, or those of ``names`` that exist) and their
    common sample rate (None when there is none)."""
    paths = sorted(folder.glob("*.wav"))
    if names is not None:
        paths = [p for p in paths if p.stem in names]
    stems: dict[str, np.ndarray] = {}
    rate = None
    for path in paths:
        stems[path.stem], file_rate = read_audio(path)
        if rate is not None and file_rate != rate:
            raise BSMamba2Error(f"{path} is at {file_rate} Hz but other files of {folder} at {rate} Hz")
        rate = file_rate
    return stems, rate


class FolderTrack:
    """A track given as a folder of stems ``{stem}.wav`` (subset: ``"test"``), read on demand."""

    subset = "test"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = folder.name

    @property
    def rate(self) -> int:
        with open_audio(next(iter(sorted(self.folder.glob("*.wav"))))) as source:
            return source.samplerate

    def mixture(self) -> np.ndarray:
        stems, _ = read_stems(self.folder, ["mixture"])
        if "mixture" not in stems:
            raise BSMamba2Error(f"no mixture.wav in {self.folder} to separate")
        return stems["mixture"]

    def references(self, targets: list[str]) -> dict[str, np.ndarray]:
        """The reference of each target there is one for; accompaniment = drums + bass + other."""
        wanted = [t for t in targets if t != "mixture"]
        if "accompaniment" in targets:
            wanted += ACCOMPANIMENT_SOURCES
        stems, _ = read_stems(self.folder, wanted)
        found = {t: stems[t] for t in targets if t != "mixture" and t in stems}
        complete = all(s in stems for s in ACCOMPANIMENT_SOURCES)
        if "accompaniment" in targets and "accompaniment" not in found and complete:
            found["accompaniment"] = accompaniment(stems)
        return found


class MusdbTrack:
    """A MUSDB18 song: its stems and musdb's targets (the stems, and accompaniment = drums +
    bass + other). ``subset`` is its folder (``train`` or ``test``, museval's output layout)."""

    rate = SAMPLE_RATE

    def __init__(self, track: Track) -> None:
        self.track = track
        self.name: str = track.name
        self.subset: str = track.folder

    def mixture(self) -> np.ndarray:
        return self.track.read("mixture")

    def references(self, targets: list[str]) -> dict[str, np.ndarray]:
        wanted = [t for t in targets if t in (*STEMS, "accompaniment")]
        needed = {s for t in wanted for s in (ACCOMPANIMENT_SOURCES if t == "accompaniment" else (t,))}
        stems = {s: self.track.read(s).astype(np.float64) for s in sorted(needed)}
        return {t: accompaniment(stems) if t == "accompaniment" else stems[t] for t in wanted}


def folder_tracks(root: Path, names: list[str] | None = None) -> list[FolderTrack]:
    """The track folders (sub-folders holding .wav files) of ``root``, sorted by name."""
    if not root.is_dir():
        raise BSMamba2Error(f"references folder {root} does not exist")
    tracks = [FolderTrack(d) for d in sorted(root.iterdir()) if d.is_dir() and any(d.glob("*.wav"))]
    if not tracks:
        raise BSMamba2Error(f"no track folders with .wav stems ({{track}}/{{stem}}.wav) in {root}")
    return _select(tracks, names, str(root))


def musdb_tracks(
    root: Path, is_wav: bool, subset: str, split: str | None, names: list[str] | None = None
) -> list[MusdbTrack]:
    """Songs of MUSDB18 (``.stem.mp4``) or, with ``is_wav``, MUSDB18-HQ (no ffmpeg needed).

    ``subset`` ``test`` or ``train``; ``split="valid"``/``"train"`` selects musdb's official
    14-song validation split of the train subset (or the rest of it).
    """
    if not (root / subset).is_dir():
        raise BSMamba2Error(f"{root} is not a MUSDB18 folder: {root / subset} does not exist")
    parts = subsets_for(subset, split)
    tracks = sorted((t for part in parts for t in list_tracks(root, part, is_wav)), key=lambda t: t.name)
    if not tracks:
        hint = "" if is_wav else " (MUSDB18-HQ folders of .wav files need --is-wav)"
        raise DatasetError(f"no MUSDB18 tracks found in {root / subset}{hint}")
    return [MusdbTrack(t) for t in _select(tracks, names, f"{root / subset}")]


def _select(tracks: list, names: list[str] | None, where: str) -> list:
    if not names:
        return tracks
    by_name = {t.name: t for t in tracks}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise BSMamba2Error(f"no track named {', '.join(map(repr, unknown))} in {where}")
    return [by_name[n] for n in names]
