"""Resumable, verified downloads: a file appears under its final name only once its size
and SHA-256 match (the size the server announces and no hash check when the caller knows
neither, as for a user's own URL without a hash); an interrupted transfer leaves a ``.part``
file the next call resumes (HTTP Range), a corrupt one is deleted. Processes fetching the same file take turns
(a ``.lock`` file beside it, POSIX ``flock``), so two commands started together download
it once and both use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock, downloads stay safe but may repeat
    fcntl = None

from bsmamba2._version import __version__
from bsmamba2.errors import BSMamba2Error

_CHUNK = 1 << 20


class DownloadError(BSMamba2Error):
    """A transfer that failed or delivered the wrong bytes."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _interrupted(url: str, part: Path, size: int | None, why: str) -> DownloadError:
    done = part.stat().st_size if part.exists() else 0
    if not done:  # nothing arrived (offline, refused, unknown host): nothing to resume
        return DownloadError(f"download of {url} failed ({why})")
    return DownloadError(
        f"download of {url} interrupted at {done} of {size or 'unknown'} bytes ({why}); "
        "run the command again to resume"
    )


def _announced_size(resp: http.client.HTTPResponse) -> int | None:
    """The whole file's size the server states: Content-Range's total for a resumed (206)
    transfer, else Content-Length; None when it states none."""
    total = (resp.headers.get("Content-Range") or "").rpartition("/")[2]
    length = total if resp.status == 206 else resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def ssl_context() -> ssl.SSLContext | None:
    """certifi's CA bundle when certifi is installed, else Python's default (None): the Python of
    python.org on macOS comes without CA certificates ("certificate verify failed")."""
    try:
        import certifi
    except ImportError:
        return None
    return ssl.create_default_context(cafile=certifi.where())


def _transfer(url: str, part: Path, size: int | None, progress: bool) -> int | None:
    """Fetch ``url`` into ``part`` (resuming what is there); the file's size, ``size`` or,
    when that is None, the one the server announced (None if it announced none)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"bsmamba2/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=60, context=ssl_context()) as resp:
            if have and resp.status != 206:  # the server ignored the range: start over
                have = 0
            size = size if size is not None else _announced_size(resp)
            with (
                part.open("ab" if have else "wb") as f,
                tqdm(
                    total=size,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=part.name.removesuffix(".part"),
                    disable=not progress,
                    leave=False,
                ) as bar,
            ):
                while block := resp.read(_CHUNK):
                    f.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have and size in (None, have):  # nothing left to fetch
            return have
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _interrupted(url, part, size, f"{type(exc).__name__}: {exc}") from None
    if size is not None and part.stat().st_size < size:  # the server closed the connection early
        raise _interrupted(url, part, size, "connection closed")
    return size


@contextlib.contextmanager
def download_lock(dest: Path, progress: bool = True) -> Iterator[None]:
    """Hold the cross-process lock of ``dest`` (the file ``dest.lock``, removed on release).

    Waits, saying so once, while another process holds it. A waiter that got the lock
    on a file its holder has just removed tries again on the new one, so two processes
    never both hold it. Without ``fcntl`` (Windows) there is no lock.
    """
    if fcntl is None:
        yield
        return
    path = dest.with_name(dest.name + ".lock")
    said = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if progress and not said:
                    print(f"waiting for another process downloading {dest.name}", file=sys.stderr, flush=True)
                    said = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def download(
    url: str, dest: str | os.PathLike, size: int | None, sha256: str | None, progress: bool = True
) -> Path:
    """``dest``, fetched from ``url`` unless already there with the right size (one process
    at a time: see :func:`download_lock`). ``size`` None: the size the server announces,
    and a file already at ``dest`` is taken as complete (only verified files are renamed
    there) if it has ``sha256``, or if there is no ``sha256`` to check (none: no hash check);
    one that does not match is fetched again."""
    dest = Path(dest)

    def present() -> bool:
        if not dest.is_file():
            return False
        if size is not None:
            return dest.stat().st_size == size
        return sha256 is None or sha256_of(dest) == sha256

    if present():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with download_lock(dest, progress):
        if present():  # another process just fetched it
            return dest
        return _fetch(url, dest, size, sha256, progress)


def _fetch(url: str, dest: Path, size: int | None, sha256: str | None, progress: bool) -> Path:
    """Transfer (or resume) into ``dest.part``, verify it, rename it to ``dest``."""
    part = dest.with_name(dest.name + ".part")
    if part.exists() and size is not None and part.stat().st_size > size:
        part.unlink()
    size = _transfer(url, part, size, progress)
    got = part.stat().st_size
    whole = size is None or got == size
    digest = sha256_of(part) if whole and sha256 is not None else None
    if not whole or digest != sha256:
        part.unlink()
        found = f"SHA-256 {digest}" if digest else f"{got} bytes"
        wanted = [f"{size} bytes"] * (size is not None) + [f"SHA-256 {sha256}"] * (sha256 is not None)
        wanted = " with ".join(wanted)
        raise DownloadError(f"download of {url} is corrupt ({found}, expected {wanted}); deleted it")
    os.replace(part, dest)
    return dest
