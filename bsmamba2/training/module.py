"""The LightningModule that trains BSMamba2 as the official recipe does (spec §3–§4).

Checkpoints keep the official layout, so :func:`bsmamba2.load_model` reads them as they are:
``state_dict`` holds the ``model.``-prefixed weights, ``optimizer_states[0]["ema"]`` the EMA
weights in parameter order (``load_model(path, ema=True)``). Each new best validation score
also writes the EMA weights as ``best.safetensors`` (our format, config inside) next to the
checkpoints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from bsmamba2.checkpoint import save_model
from bsmamba2.data.musdb import STEMS
from bsmamba2.errors import BSMamba2Error
from bsmamba2.evaluation.metrics import usdr_batch
from bsmamba2.model import BSMamba2, BSMamba2Config, istft, stft
from bsmamba2.model.mixers import set_recompute
from bsmamba2.training.ema import EMA
from bsmamba2.training.loss import MultiResolutionLoss

BEST_EXPORT = "best.safetensors"


class NonFiniteError(BSMamba2Error):
    """Too many non-finite losses or gradients in a row: the run diverged."""


class BSMamba2Module(pl.LightningModule):
    """BSMamba2 + the multi-resolution loss, AdamW, EMA and uSDR validation.

    Args:
        net: the architecture (``n_stems`` is set from ``targets``).
        targets: the stems the model separates, in output order (linked to ``data.targets``).
        lr, weight_decay: AdamW (constant learning rate, decay on every parameter).
        ema_decay: decay of the weight EMA, updated after every optimizer step.
        max_nonfinite: stop after this many non-finite losses/gradients in a row.
        recompute: ``mixer`` recomputes the Mamba-2 mixers in the backward pass instead of
            keeping their activations (:func:`bsmamba2.model.mixers.set_recompute`), ``cheap``
            all of them but the SSD scan (whose output it keeps), ``none`` keeps them all (the
            fastest, the most memory).
        recompute_layers: recompute the mixers of the first this many of the ``depth``
            layers only (None: all): less time spent, less memory saved.
    """

    def __init__(
        self,
        net: BSMamba2Config | None = None,
        targets: list[str] | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        ema_decay: float = 0.999,
        max_nonfinite: int = 20,
        recompute: Literal["none", "mixer", "cheap"] = "mixer",
        recompute_layers: int | None = None,
    ) -> None:
        super().__init__()
        self.targets = list(targets or ["vocals"])
        unknown = [t for t in self.targets if t not in STEMS]
        if unknown:
            raise BSMamba2Error(f"unknown target stems {unknown}; choose from {', '.join(STEMS)}")
        if recompute_layers is not None and recompute_layers < 0:
            raise BSMamba2Error(f"recompute_layers={recompute_layers}: expected a count ≥ 0, or null for all")
        cfg = BSMamba2Config.from_dict(
            {**(net or BSMamba2Config()).to_dict(), "n_stems": len(self.targets), "targets": self.targets}
        )
        self.save_hyperparameters(
            {
                "net": cfg.to_dict(),
                "targets": self.targets,
                "lr": lr,
                "weight_decay": weight_decay,
                "ema_decay": ema_decay,
                "recompute": recompute,
                "recompute_layers": recompute_layers,
            }
        )
        self.model = BSMamba2(cfg)
        for layer in self.model.layers[:recompute_layers]:
            set_recompute(layer, recompute)
        self.loss = MultiResolutionLoss()
        self.lr, self.weight_decay = lr, weight_decay
        self.ema_decay, self.max_nonfinite = ema_decay, max_nonfinite
        self.ema: EMA | None = None
        self._ema_state: list[torch.Tensor] | None = None
        self.nonfinite_total = 0
        self._nonfinite_run = 0
        self._step_ok = True
        self._skipped = False  # the last micro-batch had a non-finite loss
        self._val_sums: list[torch.Tensor] = []
        self.best_score = -math.inf

    @property
    def config(self) -> BSMamba2Config:
        return self.model.config

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        """Waveforms ``(B, C, L)`` → separated waveforms ``(B, n_stems, C, L)``."""
        spec = stft(mixture.float(), self.config)
        return istft(self.model(spec), self.config, length=mixture.shape[-1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # -- training ---------------------------------------------------------------------------

    def compute_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The loss of a batch ``(mixture (B, C, L), targets (B, S, C, L))``."""
        mixture, targets = batch
        # The official target is iSTFT(STFT(y)): what a perfect mask could give.
        target = istft(stft(targets.float(), self.config), self.config, length=targets.shape[-1])
        return self.loss(self(mixture), target)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        mixture = batch[0]
        loss = self.compute_loss(batch)
        bad = self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False)
        self._skipped = bad
        if bad:  # every rank skips together, so DDP never waits for a missing backward
            self._nonfinite(f"non-finite loss at step {self.global_step}")
            return None
        self.log("train/loss", loss, prog_bar=True, batch_size=mixture.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if self._skipped or not grads:  # Lightning does not step after a skipped last micro-batch
            self._step_ok = False
            return
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        self._step_ok = bool(torch.isfinite(norm))  # gradients are already all-reduced: same on every rank
        if not self._step_ok:
            for p in self.model.parameters():
                p.grad = None  # AdamW leaves parameters without gradient untouched
            self._nonfinite(f"non-finite gradient at step {self.global_step}")
            return
        self.log("train/grad_norm", norm)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self._step_ok and self.ema is not None:
            self.ema.update(self.model.parameters())
            self._nonfinite_run = 0

    def _nonfinite(self, what: str) -> None:
        self.nonfinite_total += 1
        self._nonfinite_run += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_total))
        rank_zero_warn(f"{what}: step skipped ({self.nonfinite_total} so far)")
        if self._nonfinite_run >= self.max_nonfinite:
            raise NonFiniteError(
                f"{self._nonfinite_run} non-finite losses/gradients in a row (last: {what}); "
                "the run diverged: resume from an earlier checkpoint or lower the learning rate"
            )

    # -- EMA and validation ----------------------------------------------------------------

    def on_fit_start(self) -> None:
        self.ema = EMA(self.model.parameters(), self.ema_decay, state=self._ema_state)
        self._ema_state = None

    def on_validation_epoch_start(self) -> None:
        self._val_sums = []
        if self.ema is not None:
            self.ema.swap(self.model.parameters())

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        mixture, targets = batch
        scores = usdr_batch(targets.float(), self(mixture).float())  # (B, n_stems), float64
        self._val_sums.append(torch.cat([scores.sum(0), scores.new_tensor([scores.shape[0]])]))

    def on_validation_epoch_end(self) -> None:
        sums = torch.stack(self._val_sums).sum(0) if self._val_sums else torch.zeros(len(self.targets) + 1)
        sums = self.trainer.strategy.reduce(sums.to(self.device), reduce_op="sum")
        per_stem = sums[:-1] / sums[-1].clamp_min(1)
        score = float(per_stem.mean())
        for name, value in zip(self.targets, per_stem, strict=True):
            self.log(f"val/usdr_{name}", float(value), sync_dist=True)  # already reduced: same on all ranks
        self.log("val/usdr", score, prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking and score > self.best_score:
            self.best_score = score
            self._export_best(score)
        if self.ema is not None:
            self.ema.swap(self.model.parameters())

    def _export_best(self, score: float) -> None:
        """The EMA weights (swapped in during validation) as ``best.safetensors``."""
        if not self.trainer.is_global_zero:
            return
        callback = self.trainer.checkpoint_callback
        folder = Path(
            callback.dirpath if callback is not None and callback.dirpath else self.trainer.default_root_dir
        )
        meta = {"step": str(self.global_step), "val_usdr": f"{score:.4f}"}
        save_model(self.model, folder / BEST_EXPORT, metadata=meta)

    # -- checkpoints -----------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and checkpoint.get("optimizer_states"):
            checkpoint["optimizer_states"][0]["ema"] = tuple(t.detach().cpu() for t in self.ema.shadow)
        checkpoint["bsmamba2"] = {"nonfinite_total": self.nonfinite_total, "best_score": self.best_score}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("optimizer_states") or [{}]
        ema = states[0].pop("ema", None)  # not an optimizer field: AdamW must not see it
        self._ema_state = list(ema) if ema is not None else None
        extra = checkpoint.get("bsmamba2", {})
        self.nonfinite_total = int(extra.get("nonfinite_total", 0))
        self.best_score = float(extra.get("best_score", -math.inf))
