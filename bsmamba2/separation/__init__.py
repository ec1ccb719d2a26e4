"""Separation: the :class:`Separator` (chunking, cross-fades, streaming I/O) and its progress reports.

The names load their modules on first use (:mod:`bsmamba2._lazy`): the command line reads
the option defaults of :mod:`.chunking` without loading torch.
"""

from typing import TYPE_CHECKING

from bsmamba2._lazy import lazy_exports

if TYPE_CHECKING:
    from bsmamba2.separation.progress import Progress
    from bsmamba2.separation.separator import (
        ClippingWarning,
        NonFiniteOutputError,
        OutputExistsError,
        Separator,
    )

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ClippingWarning": "bsmamba2.separation.separator",
        "NonFiniteOutputError": "bsmamba2.separation.separator",
        "OutputExistsError": "bsmamba2.separation.separator",
        "Progress": "bsmamba2.separation.progress",
        "Separator": "bsmamba2.separation.separator",
    },
)

__all__ = ["ClippingWarning", "NonFiniteOutputError", "OutputExistsError", "Progress", "Separator"]
