"""Training and validation segments of MUSDB18 (spec §4), and the sampler that makes them resumable.

Every training item is a pure function of ``(seed, position)``: the position of the segment in
the run's global stream (across epochs, ranks and workers). Worker seeds, the number of
workers and the number of GPUs therefore never change what is trained on, and a resumed run
continues the stream exactly where its checkpoint stopped (:class:`SegmentSampler`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from bsmamba2.data.musdb import STEMS, DatasetError, Track


@dataclass(frozen=True)
class Draw:
    """The random choices behind one training item: per stem (in :data:`STEMS` order)."""

    tracks: tuple[int, ...]
    starts: tuple[int, ...]
    silent: tuple[bool, ...]
    gains: tuple[float, ...]


def _check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    unknown = [t for t in targets if t not in STEMS]
    if not targets or unknown or len(set(targets)) != len(targets):
        raise DatasetError(f"targets must be distinct stems among {', '.join(STEMS)}; got {list(targets)}")
    return tuple(targets)


def _windows(index: Mapping[str, Any], tracks: Sequence[Track], stem: str) -> np.ndarray:
    """All salient windows of ``stem`` as rows (track number, start sample)."""
    rows = []
    for i, track in enumerate(tracks):
        entry = index.get(track.name)
        if entry is None:
            raise DatasetError(f"{track.name}: not in the SAD index; run `bsmamba2 prepare` again")
        rows += [(i, s) for s in entry["windows"][stem]]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


class MixingDataset(Dataset):
    """Random cross-track mixtures: each stem from a random salient window of a random song.

    Per stem (the targets included): silent with probability ``silent_prob``, scaled by
    ``U(gain_min, gain_max)``. Item ``position`` → ``(mixture (C, L), targets (S, C, L))``.
    Segments shorter than the index's window start at a random offset inside the window.
    """

    def __init__(
        self,
        tracks: Sequence[Track],
        index: Mapping[str, Any],
        window: int,
        segment: int,
        targets: Sequence[str] = ("vocals",),
        silent_prob: float = 0.1,
        gain_min: float = 0.5,
        gain_max: float = 1.5,
        seed: int = 0,
    ) -> None:
        if segment > window:
            raise DatasetError(
                f"segment {segment} samples is longer than the SAD window {window}; run prepare again"
            )
        self.tracks = list(tracks)
        self.targets = _check_targets(targets)
        self.window, self.segment = window, segment
        self.silent_prob, self.gain_min, self.gain_max, self.seed = silent_prob, gain_min, gain_max, seed
        self.windows = [_windows(index, self.tracks, stem) for stem in STEMS]
        empty = [stem for stem, w in zip(STEMS, self.windows, strict=True) if len(w) == 0]
        if empty:
            raise DatasetError(f"no salient windows for {', '.join(empty)} in the training set")

    def __len__(self) -> int:  # positions are unbounded; the sampler chooses them
        return 2**62

    def draw(self, position: int) -> Draw:
        """The choices for item ``position`` (deterministic in ``(seed, position)``)."""
        rng = np.random.default_rng([self.seed, position])
        picks = [w[rng.integers(len(w))] for w in self.windows]
        offsets = rng.integers(0, self.window - self.segment + 1, size=len(STEMS))
        silent = rng.random(len(STEMS)) < self.silent_prob
        gains = rng.uniform(self.gain_min, self.gain_max, size=len(STEMS))
        return Draw(
            tracks=tuple(int(p[0]) for p in picks),
            starts=tuple(int(p[1] + o) for p, o in zip(picks, offsets, strict=True)),
            silent=tuple(bool(s) for s in silent),
            gains=tuple(float(g) for g in gains),
        )

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.draw(position)
        stems = {}
        for k, stem in enumerate(STEMS):
            if d.silent[k]:
                stems[stem] = np.zeros((2, self.segment), np.float32)
            else:
                stems[stem] = self.tracks[d.tracks[k]].read(stem, d.starts[k], self.segment) * np.float32(
                    d.gains[k]
                )
        mixture = np.sum([stems[s] for s in STEMS], axis=0)
        targets = np.stack([stems[t] for t in self.targets])
        return torch.from_numpy(mixture), torch.from_numpy(targets)


class ValidationDataset(Dataset):
    """Aligned real mixes: ``windows_per_track`` salient windows of the first target per song.

    The windows are fixed by ``seed`` (the same every epoch, so scores compare across epochs);
    a song with fewer salient windows contributes all of them.
    """

    def __init__(
        self,
        tracks: Sequence[Track],
        index: Mapping[str, Any],
        segment: int,
        targets: Sequence[str] = ("vocals",),
        windows_per_track: int = 4,
        seed: int = 0,
    ) -> None:
        self.tracks = list(tracks)
        self.targets = _check_targets(targets)
        self.segment = segment
        windows = _windows(index, self.tracks, self.targets[0])
        rng = np.random.default_rng(seed)
        items = []
        for i in range(len(self.tracks)):
            starts = windows[windows[:, 0] == i, 1]
            chosen = rng.choice(starts, size=min(windows_per_track, len(starts)), replace=False)
            items += [(i, int(s)) for s in sorted(chosen)]
        if not items:
            raise DatasetError(f"no salient {self.targets[0]} windows in the validation songs")
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        track, start = self.tracks[self.items[i][0]], self.items[i][1]
        mixture = track.read("mixture", start, self.segment)
        targets = np.stack([track.read(t, start, self.segment) for t in self.targets])
        return torch.from_numpy(mixture), torch.from_numpy(targets)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SegmentSampler(Sampler[int]):
    """This rank's positions in the global segment stream, one epoch at a time.

    Global batch ``b`` (all ranks) holds positions ``b·W·B … (b+1)·W·B − 1``; rank ``r`` takes
    its ``r``-th slice of ``B``. ``consumed`` (batches this rank has trained on) is advanced by
    the data module and stored in checkpoints, so an epoch resumed mid-way continues where it
    stopped and a new epoch starts after the last segment trained on.
    """

    def __init__(self, segments_per_epoch: int, batch_size: int) -> None:
        self.segments_per_epoch, self.batch_size = segments_per_epoch, batch_size
        self.consumed = 0

    def batches_per_epoch(self) -> int:
        _, world = _rank_and_world()
        n = self.segments_per_epoch // (world * self.batch_size)
        if n == 0:
            raise DatasetError(
                f"segments_per_epoch {self.segments_per_epoch} < one global batch "
                f"({world} × {self.batch_size})"
            )
        return n

    def __len__(self) -> int:
        return self.batches_per_epoch() * self.batch_size

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_and_world()
        first = self.consumed
        for b in range(first, first + self.batches_per_epoch()):
            base = (b * world + rank) * self.batch_size
            yield from range(base, base + self.batch_size)


class ShardSampler(Sampler[int]):
    """Validation items split over ranks without padding (every item scored exactly once)."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def _mine(self) -> range:
        rank, world = _rank_and_world()
        return range(rank, self.n_items, world)

    def __len__(self) -> int:
        return len(self._mine())

    def __iter__(self) -> Iterator[int]:
        return iter(self._mine())
