"""Build one of our C sources into a shared library on first use, with the system's C compiler,
and load it with ctypes: CPU kernels without torch's headers, ninja or a Python dependency.

The library is cached in ``cpu-kernels/`` of bsmamba2's cache folder (``$BSMAMBA2_CACHE``,
default ``~/.cache/bsmamba2``), named by a hash of the source, the compiler (its path and
``--version``), the flags and this CPU (``-march=native`` code runs only where it was built),
so a changed source, compiler or machine builds anew. It is compiled to a temporary name in that
folder and renamed into place: processes that build it at once each write their own file and
the last rename wins, and a reader never sees half a library. The compiler is ``$CC``, else the
first of cc, gcc, clang on PATH.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from bsmamba2.errors import BSMamba2Error

FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared")
"""OpenMP for the threads; no -ffast-math: the kernels need no vector math library, and linking
with it would switch the whole process to flushing subnormals to zero."""
BUILD_SECONDS = 120
_LOCK = threading.Lock()


class BuildError(BSMamba2Error, RuntimeError):
    """The C compiler is missing or could not build a kernel."""


def compiler() -> str | None:
    """The C compiler: ``$CC`` if set (None when it is not found), else cc, gcc or clang."""
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    return next((path for path in map(shutil.which, names) if path), None)


def _cpu() -> str:
    """What identifies this CPU's instruction set: its /proc/cpuinfo flags where there are."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.machine() + platform.processor()


def _library_path(source: Path, cc: str) -> Path:
    from bsmamba2.checkpoint.registry import cache_dir

    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([source.read_text(), cc, version, *FLAGS, _cpu()]).encode()).hexdigest()
    return cache_dir() / "cpu-kernels" / f"{source.stem}-{key[:20]}.so"


def _compile(source: Path, cc: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *FLAGS, str(source), "-o", tmp], capture_output=True, text=True,
                              timeout=BUILD_SECONDS)
        if done.returncode:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            first = next((line for line in lines if "error:" in line), lines[0])
            raise BuildError(f"{Path(cc).name} could not build {source.name}: {first.strip()}")
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):  # renamed into place
            os.unlink(tmp)


@functools.cache
def _load(source: Path, cc: str) -> ctypes.CDLL:
    path = _library_path(source, cc)
    if not path.is_file():
        _compile(source, cc, path)
    return ctypes.CDLL(str(path))


def load_library(source: Path) -> ctypes.CDLL:
    """The library built from the C file ``source`` (built on the first call, then cached on
    disk and in this process). Raises :class:`BuildError` in one line when it cannot be."""
    cc = compiler()
    if cc is None:
        wanted = os.environ.get("CC") or "cc, gcc or clang"
        raise BuildError(f"no C compiler found ({wanted}) to build {source.name}")
    with _LOCK:
        try:
            return _load(source, cc)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BuildError(f"could not build or load {source.name}: {exc}") from exc
