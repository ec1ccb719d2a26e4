"""Lightning checkpoints written atomically (temporary file in the same folder + ``os.replace``).

Lightning's own writer stages the file in the system temporary folder and moves it, which
is a plain copy, and not atomic, when that folder is on another file system.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bsmamba2.fileio import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """A killed run leaves every checkpoint either complete or as it was before."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        atomic_write(path, lambda f: torch.save(checkpoint, f))
