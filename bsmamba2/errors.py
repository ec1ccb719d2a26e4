"""The error type for problems a user can fix (the CLI prints its message as one line), and
the guarded import of the MUSDB18 packages.

musdb and museval import stempeg, which refuses to import without the ffmpeg and ffprobe
programs (even for MUSDB18-HQ's WAV folders: musdb probes every file with ffprobe):
:func:`require` turns that into a one-line :class:`BSMamba2Error`.
"""

from __future__ import annotations

import importlib
import shutil
from types import ModuleType


class BSMamba2Error(Exception):
    """Bad input, a missing file, an unusable checkpoint: reported without a traceback."""


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
        raise BSMamba2Error(f"cannot import {module} ({exc}): `pip install {module}`") from exc
