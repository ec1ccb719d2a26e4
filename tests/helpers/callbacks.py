"""Lightning callbacks used by tests/training/test_training.py (importable by class path, picklable for DDP spawn)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class LossRecorder(pl.Callback):
    """Appends ``global_step loss`` (exact, as a hex float) per training batch to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {float(outputs['loss']).hex()}\n")


class GradRecorder(pl.Callback):
    """Saves the gradients of the first optimizer step (all-reduced, before clipping), per rank."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()}
            torch.save(grads, f"{self.folder}/grads_rank{trainer.global_rank}.pt")
