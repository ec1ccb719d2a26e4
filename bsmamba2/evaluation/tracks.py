"""Tracks to evaluate: MUSDB18 through the musdb package, or folders of ``{track}/{stem}.wav``.

Audio is returned as ``(channels, samples)`` arrays, the convention of
:mod:`bsmamba2.evaluation.metrics` and of the Separator.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from bsmamba2.audio import open_audio, read_audio
from bsmamba2.errors import BSMamba2Error, require

#: What MUSDB18 mixes into the accompaniment target (musdb's ``mus.yaml``).
ACCOMPANIMENT_SOURCES = ("drums", "bass", "other")


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


def _last_line(exc: Exception) -> str:
    """The last line of a tool's message (ffmpeg puts the cause there)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


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
        sources = [stems.get(s) for s in ACCOMPANIMENT_SOURCES]
        complete = all(source is not None for source in sources)
        if "accompaniment" in targets and "accompaniment" not in found and complete:
            found["accompaniment"] = np.sum(sources, axis=0)
        return found


class MusdbTrack:
    """A track of a ``musdb.DB``; targets as musdb mixes them (float64, like museval gets them)."""

    def __init__(self, track) -> None:
        self.track = track
        self.name: str = track.name
        self.subset: str = track.subset
        self.rate = int(track.rate)

    def _read(self, what: str, read: Callable[[], np.ndarray]) -> np.ndarray:
        """``(channels, samples)`` audio from musdb (stempeg and ffmpeg), errors as one line."""
        try:
            audio = read()
        except Exception as exc:  # stempeg/ffmpeg raise many types for unreadable files
            raise BSMamba2Error(
                f"cannot read the {what} of MUSDB18 track {self.name!r}: {_last_line(exc)}"
            ) from exc
        return np.ascontiguousarray(audio.T)

    def mixture(self) -> np.ndarray:
        return self._read("mixture", lambda: self.track.audio)

    def references(self, targets: list[str]) -> dict[str, np.ndarray]:
        found = [t for t in targets if t in self.track.targets]
        return {t: self._read(t, lambda t=t: self.track.targets[t].audio) for t in found}


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
    """Tracks of MUSDB18 (``.stem.mp4``) or, with ``is_wav``, MUSDB18-HQ, via ``musdb.DB``.

    ``split="valid"``/``"train"`` selects musdb's official 14-song validation split of the
    train subset (or the rest of it).
    """
    if split is not None and subset != "train":
        raise BSMamba2Error("--split selects part of the train subset: use it with --subset train")
    if not (root / subset).is_dir():
        raise BSMamba2Error(f"{root} is not a MUSDB18 folder: {root / subset} does not exist")
    musdb = require("musdb")
    try:
        db = musdb.DB(root=str(root), is_wav=is_wav, subsets=subset, split=split)
    except Exception as exc:  # stempeg probes every mixture file with ffprobe
        raise BSMamba2Error(f"cannot read MUSDB18 in {root / subset}: {_last_line(exc)}") from exc
    if not db.tracks:
        hint = "" if is_wav else " (MUSDB18-HQ folders of .wav files need --is-wav)"
        raise BSMamba2Error(f"no MUSDB18 tracks found in {root / subset}{hint}")
    tracks = _select(db.tracks, names, f"{root / subset}")
    for track in tracks:
        if track.rate is None:  # musdb lists a track folder even without its mixture
            raise BSMamba2Error(f"{track.path} does not exist: incomplete MUSDB18 track {track.name!r}")
    return [MusdbTrack(t) for t in tracks]


def _select(tracks: list, names: list[str] | None, where: str) -> list:
    if not names:
        return tracks
    by_name = {t.name: t for t in tracks}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise BSMamba2Error(f"no track named {', '.join(map(repr, unknown))} in {where}")
    return [by_name[n] for n in names]
