"""Atomic file output: write next to the target, then ``os.replace`` it into place.

A reader (or a resumed run) sees either the old file or the complete new one, even when
the writer is killed mid-way. Files get the usual permissions (0666 minus the umask),
not mkstemp's private 0600. A failure to write is a :class:`WriteError` that says what
failed and where (``no space left on device writing out/song/vocals.wav``); the temporary
file, and the folders made for it, are removed.

While a temporary file is being written its writer holds a lock on it (POSIX ``flock``),
so :func:`remove_stale_temporaries` can tell the leftovers of a killed run (no lock: the
kernel dropped it with the process) from the files of a run that is still writing.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from bsmamba2.errors import BSMamba2Error

try:
    import fcntl
except ImportError:  # Windows: no lock, so leftovers are never removed automatically
    fcntl = None

SUFFIXES = (".tmp", ".part")
"""Suffixes of the temporary files this module makes."""
STOPS_EVERY_WRITE = (errnos.ENOSPC, errnos.EDQUOT, errnos.EROFS)
"""Errors that no other file in the same place would escape: a batch should stop on them."""


class WriteError(BSMamba2Error, OSError):
    """An output that could not be written; ``errno`` is the system's reason when known."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def write_error(exc: BaseException, path: str | os.PathLike) -> WriteError:
    """``exc`` (an OSError, or a library's error with ``errno``/a message) as one line naming ``path``."""
    code = getattr(exc, "errno", None)
    reason = os.strerror(code).lower() if code else (str(exc).strip().splitlines() or ["error"])[-1]
    return WriteError(f"{reason} writing {path}", code)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _temporary(path: Path, suffix: str) -> tuple[Path, int]:
    """A new hidden temporary file beside ``path``, locked by the returned descriptor."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        if fcntl is None:
            return Path(tmp), fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:  # not taken for stale in between
                return Path(tmp), fd
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary file is removed, and so are
    the folders made for it if they are still empty; ``path`` is left as it was. A failure of
    the file system here is a :class:`WriteError`.
    """
    path = Path(path)
    made = _missing_folders(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = _temporary(path, suffix)
    except OSError as exc:
        _remove_empty(made)
        raise write_error(exc, path) from None
    try:
        yield tmp
        try:
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except OSError as exc:
            raise write_error(exc, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        _remove_empty(made)
        raise
    finally:
        os.close(fd)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another writer uses it) or already gone
            return


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` (``.NAME.XXXXXXXX.part`` and ``.tmp``) that no
    writer holds: what a killed run left. Returns the removed paths."""
    path = Path(path)
    if fcntl is None or not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}({'|'.join(map(re.escape, SUFFIXES))})")
    removed = []
    for candidate in path.parent.iterdir():
        if not pattern.fullmatch(candidate.name):
            continue
        try:
            fd = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            candidate.unlink()
            removed.append(candidate)
        except OSError:  # held by a live writer, or gone
            pass
        finally:
            os.close(fd)
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a binary temporary file, flush it to disk, rename it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            raise write_error(exc, path) from None
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str | bytes) -> Path:
    """Write a string (UTF-8) or bytes atomically."""
    data = text.encode() if isinstance(text, str) else text
    return atomic_write(path, lambda f: f.write(data))
