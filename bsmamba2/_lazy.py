"""Package faces that load their modules on first use (PEP 562 ``__getattr__``).

``import bsmamba2`` and ``bsmamba2.checkpoint`` stay cheap this way: the command line reads
the version, the known checkpoints and the option defaults without loading torch (over a
second on a small machine), and a name like ``bsmamba2.Separator`` imports its module only
when it is first used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose ``exports`` map a name to the
    module that defines it; a name is looked up once, then kept in the package."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
