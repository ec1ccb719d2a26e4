"""Checkpoints: reading every layout in the wild (no pickled code runs), writing our own, and
the known checkpoints (name → URL, size, SHA-256) with their verified downloads.

The names load their modules on first use (:mod:`bsmamba2._lazy`): the command line reads
the known names without loading torch.
"""

from typing import TYPE_CHECKING

from bsmamba2._lazy import lazy_exports

if TYPE_CHECKING:
    from bsmamba2.checkpoint.io import CheckpointError, infer_config, load_model, read_weights, save_model

__getattr__, __dir__ = lazy_exports(
    __name__,
    {name: "bsmamba2.checkpoint.io" for name in
     ("CheckpointError", "infer_config", "load_model", "read_weights", "save_model")},
)

__all__ = ["CheckpointError", "infer_config", "load_model", "read_weights", "save_model"]
