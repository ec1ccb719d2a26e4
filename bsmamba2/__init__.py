"""BSMamba2 music source separation: Mamba-2 band-split model, checkpoints, kernels.

The names below load their modules on first use (:mod:`bsmamba2._lazy`), so importing the
package (and running ``bsmamba2 --version``) does not load torch.
"""

from typing import TYPE_CHECKING

from bsmamba2._lazy import lazy_exports
from bsmamba2._version import __version__

if TYPE_CHECKING:
    from bsmamba2.checkpoint import CheckpointError, load_model, save_model
    from bsmamba2.model import BSMamba2, BSMamba2Config
    from bsmamba2.separation import Separator

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BSMamba2": "bsmamba2.model",
        "BSMamba2Config": "bsmamba2.model",
        "CheckpointError": "bsmamba2.checkpoint",
        "Separator": "bsmamba2.separation",
        "load_model": "bsmamba2.checkpoint",
        "save_model": "bsmamba2.checkpoint",
    },
)

__all__ = [
    "BSMamba2",
    "BSMamba2Config",
    "CheckpointError",
    "Separator",
    "__version__",
    "load_model",
    "save_model",
]
