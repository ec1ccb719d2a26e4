"""BSMamba2 music source separation: Mamba-2 band-split model, checkpoints, kernels."""

from importlib.metadata import PackageNotFoundError, version

from bsmamba2.checkpoint import CheckpointError, load_model, save_model
from bsmamba2.model import BSMamba2, BSMamba2Config
from bsmamba2.separation import Separator

try:
    __version__ = version("bsmamba2")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "BSMamba2",
    "BSMamba2Config",
    "CheckpointError",
    "Separator",
    "__version__",
    "load_model",
    "save_model",
]
