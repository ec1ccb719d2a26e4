"""Throughput logging: segments/s, audio seconds/s and peak GPU memory."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info


class Throughput(pl.Callback):
    """Every ``every_n_steps`` optimizer steps: logs ``perf/*`` and prints one line.

    Counts the segments of all processes (batch × world size) and their audio seconds, so the
    numbers are for the whole job; ``perf/step_s`` is the wall time per optimizer step.
    """

    def __init__(self, every_n_steps: int = 50, sample_rate: int = 44100) -> None:
        self.every_n_steps, self.sample_rate = every_n_steps, sample_rate
        self._reset()

    def _reset(self) -> None:
        self._t0: float | None = None
        self._segments = 0
        self._samples = 0
        self._step0 = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        mixture = batch[0]
        if self._t0 is None:  # start timing after the first batch (warm-up, compilation)
            self._t0, self._step0 = time.perf_counter(), trainer.global_step
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            return
        self._segments += mixture.shape[0] * trainer.world_size
        self._samples += mixture.shape[0] * mixture.shape[-1] * trainer.world_size
        steps = trainer.global_step - self._step0
        if steps < self.every_n_steps:
            return
        if mixture.is_cuda:
            torch.cuda.synchronize(mixture.device)
        elapsed = time.perf_counter() - self._t0
        stats = {
            "perf/segments_per_s": self._segments / elapsed,
            "perf/audio_s_per_s": self._samples / self.sample_rate / elapsed,
            "perf/step_s": elapsed / steps,
        }
        line = (
            f"step {trainer.global_step}: {stats['perf/step_s']:.3f} s/step, "
            f"{stats['perf/segments_per_s']:.2f} segments/s, {stats['perf/audio_s_per_s']:.1f} audio-s/s"
        )
        if mixture.is_cuda:
            stats["perf/gpu_peak_gb"] = torch.cuda.max_memory_allocated(mixture.device) / 1e9
            line += f", GPU peak {stats['perf/gpu_peak_gb']:.1f} GB"
            torch.cuda.reset_peak_memory_stats(mixture.device)
        pl_module.log_dict(stats)
        rank_zero_info(line)
        self._t0, self._step0, self._segments, self._samples = time.perf_counter(), trainer.global_step, 0, 0


class FullTrackValidation(pl.Callback):
    """Every ``every_n_epochs`` validations: the validation songs, whole, through the evaluation code.

    On global rank 0, with the EMA weights (swapped in during validation): separation with the
    official protocol (8 s back-to-back segments), then cSDR (museval v4, median over 1 s
    windows; median over songs) and uSDR (mean over songs), logged as ``val_full/csdr_{stem}``
    and ``val_full/usdr_{stem}``; per-song JSON goes to ``{default_root_dir}/full_validation/step-N``.
    Reads the songs from the data module's ``root`` (musdb's official validation split).
    """

    def __init__(self, every_n_epochs: int = 10) -> None:
        self.every_n_epochs = every_n_epochs

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fail now, not hours in: MUSDB18's ``.stem.mp4`` songs are read through musdb, which
        needs ffmpeg (MUSDB18-HQ's WAV folders are read without it, as for training)."""
        from bsmamba2.errors import BSMamba2Error, require

        if trainer.datamodule.is_wav:
            return
        try:
            require("musdb")
        except BSMamba2Error as exc:
            raise BSMamba2Error(f"FullTrackValidation: {exc}; or drop this callback") from None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.sanity_checking or epoch % self.every_n_epochs:
            return
        if trainer.is_global_zero:
            self._evaluate(trainer, pl_module)
        trainer.strategy.barrier("full_track_validation")

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pathlib import Path

        from bsmamba2.evaluation.results import summarize
        from bsmamba2.evaluation.runner import evaluate_tracks
        from bsmamba2.evaluation.tracks import musdb_tracks
        from bsmamba2.separation.separator import Separator

        data = trainer.datamodule
        tracks = musdb_tracks(Path(data.root), data.is_wav, "train", "valid")
        separator = Separator.official(pl_module.model, device=pl_module.device, progress=False)
        out = Path(trainer.default_root_dir) / "full_validation" / f"step-{trainer.global_step}"
        settings = {"protocol": "official", "step": trainer.global_step}
        results, _ = evaluate_tracks(
            tracks, out, settings, separate=separator.separate, device=pl_module.device, progress=False
        )
        aggregate = summarize(results, settings)["aggregate"]
        stats = {}
        for target in pl_module.targets:
            stats[f"val_full/csdr_{target}"] = aggregate[target]["SDR_median"]
            stats[f"val_full/usdr_{target}"] = aggregate[target]["uSDR_mean"]
        pl_module.log_dict(stats, rank_zero_only=True)
        rank_zero_info(
            f"full-track validation at step {trainer.global_step}: "
            + ", ".join(f"{k.split('/')[1]} {v:.2f} dB" for k, v in stats.items())
        )
