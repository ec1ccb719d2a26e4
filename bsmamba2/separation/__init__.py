"""Separation: the :class:`Separator` (chunking, cross-fades, streaming I/O) and known checkpoints."""

from bsmamba2.separation.progress import Progress
from bsmamba2.separation.separator import (
    ClippingWarning,
    NonFiniteOutputError,
    OutputExistsError,
    Separator,
)

__all__ = ["ClippingWarning", "NonFiniteOutputError", "OutputExistsError", "Progress", "Separator"]
