"""The evaluation loop: estimates (separated now or read from disk), scores, per-track files.

Resumable: a track whose JSON already exists in the output folder is read back instead of
being separated and scored again, as long as it was computed with the same settings.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from bsmamba2.errors import BSMamba2Error
from bsmamba2.evaluation.results import read_track, track_path, write_track
from bsmamba2.evaluation.scoring import TrackResult, score_track
from bsmamba2.evaluation.tracks import FolderTrack, MusdbTrack, read_stems

#: ``separate(mixture (channels, samples), sample_rate) -> {target: (channels, samples)}``
TARGET_ORDER = ("vocals", "drums", "bass", "other", "accompaniment")
SeparateFn = Callable[[np.ndarray, int], dict[str, np.ndarray]]


def _target_rank(target: str) -> tuple[int, str]:
    """MUSDB18's target order first (vocals, drums, bass, other, accompaniment), then by name."""
    return (TARGET_ORDER.index(target) if target in TARGET_ORDER else len(TARGET_ORDER), target)


def estimates_folder(root: Path, track: FolderTrack | MusdbTrack) -> Path | None:
    """``{root}/{subset}/{track}`` (museval's layout) or ``{root}/{track}``, whichever exists."""
    for folder in (root / track.subset / track.name, root / track.name):
        if folder.is_dir() and any(folder.glob("*.wav")):
            return folder
    return None


def _stored(path: Path, subset: str, settings: dict[str, Any], overwrite: bool) -> TrackResult | None:
    """The saved result of a track when it can be reused."""
    if overwrite or not path.exists():
        return None
    try:
        result, stored = read_track(path, subset)
    except (ValueError, KeyError, TypeError):
        return None  # unreadable (e.g. interrupted by hand): score the track again
    if stored != settings:
        raise BSMamba2Error(
            f"{path} was computed with other settings ({stored} instead of {settings}); "
            "use --overwrite or another output folder"
        )
    return result


class Evaluation(NamedTuple):
    """The results of the scored tracks and the names of those that had no estimates."""

    results: list[TrackResult]
    missing: list[str]


def evaluate_tracks(
    tracks: Sequence[FolderTrack | MusdbTrack],
    out: Path,
    settings: dict[str, Any],
    separate: SeparateFn | None = None,
    estimates: Path | None = None,
    backend: str = "fast",
    device: str | torch.device | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Evaluation:
    """Score every track (estimates from ``separate`` or the ``estimates`` folder).

    Writes ``{out}/{subset}/{track}.json`` after each track and returns the results of all
    tracks, including those read back from earlier runs, and the tracks that had no
    estimates (in the ``estimates`` folder). Notes (silent stems, zero-padded estimates,
    tracks without estimates) are printed as they come.
    """
    if (separate is None) == (estimates is None):
        raise ValueError("give exactly one of separate and estimates")
    results, missing, reused = [], [], 0
    bar = tqdm(tracks, desc="evaluate", unit="track", disable=not progress)
    for track in bar:
        bar.set_postfix_str(track.name[:40])
        path = track_path(out, track.subset, track.name)
        result = _stored(path, track.subset, settings, overwrite)
        if result is not None:
            results.append(result)
            reused += 1
            continue
        if separate is not None:
            separated = separate(track.mixture().astype(np.float32), track.rate)
        else:
            folder = estimates_folder(estimates, track)
            if folder is None:
                tqdm.write(f"bsmamba2: {track.name}: no estimates in {estimates}, skipped", file=sys.stderr)
                missing.append(track.name)
                continue
            separated, rate = read_stems(folder)
            if rate != track.rate:
                raise BSMamba2Error(f"{folder} is at {rate} Hz but its references at {track.rate} Hz")
        separated = dict(sorted(separated.items(), key=lambda item: _target_rank(item[0])))
        references = track.references(list(separated))
        result = score_track(track.name, track.subset, references, separated, track.rate, backend, device)
        for note in result.notes:
            tqdm.write(f"bsmamba2: {track.name}: {note}", file=sys.stderr)
        write_track(out, result, settings)
        results.append(result)
    bar.close()
    if reused:
        print(f"{reused} track(s) already scored in {out}: reused (--overwrite scores them again)")
    if not results:
        raise BSMamba2Error(f"no track was scored: no estimates found in {estimates}")
    return Evaluation(results, missing)
