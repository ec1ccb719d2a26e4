"""The error type for problems a user can fix (the CLI prints its message as one line), the
check that a feature's optional dependencies (its extra) are installed, and the guarded import
of the MUSDB18 packages.

musdb and museval import stempeg, which refuses to import without the ffmpeg and ffprobe
programs (even for MUSDB18-HQ's WAV folders: musdb probes every file with ffprobe):
:func:`require` turns that into a one-line :class:`BSMamba2Error`.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from types import ModuleType


class BSMamba2Error(Exception):
    """Bad input, a missing file, an unusable checkpoint: reported without a traceback."""


EXTRAS = {
    "train": ("lightning", "jsonargparse", "tensorboard", "musdb"),
    "eval": ("musdb", "museval", "librosa"),
    "plot": ("matplotlib", "librosa"),
    "web": ("starlette", "uvicorn"),
    "hub": ("huggingface_hub",),
}
"""The modules each extra of ``pip install 'bsmamba2[EXTRA]'`` brings (pyproject.toml's
optional dependencies); separation needs none of them."""
_EXTRA_OF = {module: extra for extra, modules in reversed(EXTRAS.items()) for module in modules}


def require_extra(feature: str, extra: str, modules: tuple[str, ...] | None = None) -> None:
    """A one-line error naming the extra when a module ``feature`` needs (default: all of the
    extra's) is not installed; found without importing anything."""
    for module in EXTRAS[extra] if modules is None else modules:
        if importlib.util.find_spec(module) is None:
            raise BSMamba2Error(
                f"{feature} needs {module}, which is not installed: pip install 'bsmamba2[{extra}]'"
            )


def require(module: str) -> ModuleType:
    """Import ``musdb`` or ``museval``, or say clearly what is missing."""
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        raise BSMamba2Error(
            f"{module} needs the ffmpeg and ffprobe programs ({' and '.join(missing)} not found on PATH); "
            "install them, e.g. `apt-get install -y ffmpeg` or `conda install ffmpeg`"
        )
    try:
        return importlib.import_module(module)
    except (ImportError, RuntimeError) as exc:  # stempeg raises RuntimeError without ffmpeg
        extra = _EXTRA_OF.get(module, "eval")
        raise BSMamba2Error(f"cannot import {module} ({exc}): pip install 'bsmamba2[{extra}]'") from exc


class ParameterError(BSMamba2Error, ValueError):
    """A bad argument of a library function; ``parameter`` is its name, so the command line
    can name its own flag instead."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
