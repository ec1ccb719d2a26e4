"""The Lightning data module of MUSDB18(-HQ): training mixtures, aligned validation segments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from bsmamba2.data.datasets import MixingDataset, SegmentSampler, ShardSampler, ValidationDataset
from bsmamba2.data.musdb import SAMPLE_RATE, DatasetError, list_tracks
from bsmamba2.data.sad import default_index_path, load_index


class _ResumableLoader(DataLoader):
    """A loader whose place in the segment stream goes into checkpoints (Lightning's stateful loaders)."""

    def state_dict(self) -> dict[str, Any]:
        return {"consumed_batches": self.sampler.consumed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sampler.consumed = int(state_dict["consumed_batches"])


class MUSDBDataModule(pl.LightningDataModule):
    """MUSDB18-HQ (``is_wav: true``) or MUSDB18 stems, with the SAD index of ``bsmamba2 prepare``.

    Args:
        root: the dataset folder (with ``train/`` and ``test/``).
        index: the SAD index (default: ``ROOT/bsmamba2_sad.json``).
        is_wav: MUSDB18-HQ wav folders (true) or MUSDB18 ``.stem.mp4`` files (false).
        targets: stems the model separates (its ``n_stems`` follows this list).
        segment_seconds: length of training and validation segments (≤ the index's window).
        batch_size: segments per GPU (per process) and step.
        segments_per_epoch: training segments per epoch over all processes.
        val_windows_per_track: validation segments per validation song.
        silent_prob: probability that a stem (the targets too) is silenced in a training mix.
        gain_min, gain_max: range of the uniform gain of each stem.
        seed: seeds the training stream and the choice of validation windows.
    """

    def __init__(
        self,
        root: str,
        index: str | None = None,
        is_wav: bool = True,
        targets: list[str] | None = None,
        segment_seconds: float = 8.0,
        batch_size: int = 5,
        val_batch_size: int = 1,
        num_workers: int = 4,
        segments_per_epoch: int = 30000,
        val_windows_per_track: int = 4,
        silent_prob: float = 0.1,
        gain_min: float = 0.5,
        gain_max: float = 1.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.index_path = Path(index) if index else default_index_path(root)
        self.is_wav = is_wav
        self.targets = list(targets or ["vocals"])
        self.segment = round(segment_seconds * SAMPLE_RATE)
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.val_windows_per_track = val_windows_per_track
        self.mixing = {"silent_prob": silent_prob, "gain_min": gain_min, "gain_max": gain_max, "seed": seed}
        self.sampler = SegmentSampler(segments_per_epoch, batch_size)
        self.train_set: MixingDataset | None = None
        self.val_set: ValidationDataset | None = None

    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        index = load_index(self.index_path)
        if index.get("is_wav") != self.is_wav:
            raise DatasetError(
                f"{self.index_path}: made for is_wav={index.get('is_wav')}, data has is_wav={self.is_wav}"
            )
        subsets = index["subsets"]
        missing = [s for s in ("train", "valid") if s not in subsets]
        if missing:
            raise DatasetError(f"{self.index_path}: no {' or '.join(missing)} subset; run prepare with them")
        window = int(index["params"]["window"])
        train = list_tracks(self.root, "train", self.is_wav)
        valid = list_tracks(self.root, "valid", self.is_wav)
        self.train_set = MixingDataset(
            train, subsets["train"], window, self.segment, self.targets, **self.mixing
        )
        self.val_set = ValidationDataset(
            valid,
            subsets["valid"],
            self.segment,
            self.targets,
            self.val_windows_per_track,
            self.mixing["seed"],
        )

    def _loader(
        self, dataset: Any, sampler: Any, batch_size: int, cls: type[DataLoader] = DataLoader
    ) -> DataLoader:
        return cls(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.sampler, self.batch_size, _ResumableLoader)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, ShardSampler(len(self.val_set)), self.val_batch_size)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            self.sampler.consumed += 1
        return batch
