"""Separation: the :class:`Separator` (chunking, cross-fades, streaming I/O), its progress
reports, and :class:`SeparatorPool` (whole files in worker processes, one per device).

The names load their modules on first use (:mod:`bsmamba2._lazy`): the command line reads
the option defaults of :mod:`.chunking` without loading torch.
"""

from typing import TYPE_CHECKING

from bsmamba2._lazy import lazy_exports

if TYPE_CHECKING:
    from bsmamba2.separation.engine import NonFiniteOutputError
    from bsmamba2.separation.files import FileJob, FileReport, SeparatedFile
    from bsmamba2.separation.pool import SeparatorPool
    from bsmamba2.separation.progress import Progress
    from bsmamba2.separation.separator import (
        ClippingWarning,
        OutputExistsError,
        Separator,
    )

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ClippingWarning": "bsmamba2.separation.separator",
        "FileJob": "bsmamba2.separation.files",
        "FileReport": "bsmamba2.separation.files",
        "NonFiniteOutputError": "bsmamba2.separation.engine",
        "OutputExistsError": "bsmamba2.separation.separator",
        "Progress": "bsmamba2.separation.progress",
        "SeparatedFile": "bsmamba2.separation.files",
        "Separator": "bsmamba2.separation.separator",
        "SeparatorPool": "bsmamba2.separation.pool",
    },
)

__all__ = [
    "ClippingWarning",
    "FileJob",
    "FileReport",
    "NonFiniteOutputError",
    "OutputExistsError",
    "Progress",
    "SeparatedFile",
    "Separator",
    "SeparatorPool",
]
