"""Resumable, verified downloads: a file appears under its final name only once its size
and SHA-256 match; an interrupted transfer leaves a ``.part`` file the next call resumes
(HTTP Range), a corrupt one is deleted.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from bsmamba2 import __version__
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


def _interrupted(url: str, part: Path, size: int, why: str) -> DownloadError:
    done = part.stat().st_size if part.exists() else 0
    return DownloadError(
        f"download of {url} interrupted at {done} of {size} bytes ({why}); run the command again to resume"
    )


def _transfer(url: str, part: Path, size: int, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"bsmamba2/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as resp:
            if have and resp.status != 206:  # the server ignored the range: start over
                have = 0
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
        if exc.code == 416 and have == size:  # nothing left to fetch
            return
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _interrupted(url, part, size, f"{type(exc).__name__}: {exc}") from None
    if part.stat().st_size < size:  # the server closed the connection early
        raise _interrupted(url, part, size, "connection closed")


def download(url: str, dest: str | os.PathLike, size: int, sha256: str, progress: bool = True) -> Path:
    """``dest``, fetched from ``url`` unless already there with the right size."""
    dest = Path(dest)
    if dest.is_file() and dest.stat().st_size == size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists() and part.stat().st_size > size:
        part.unlink()
    _transfer(url, part, size, progress)
    got = part.stat().st_size
    digest = sha256_of(part) if got == size else None
    if digest != sha256:
        part.unlink()
        found = f"SHA-256 {digest}" if digest else f"{got} bytes"
        raise DownloadError(
            f"download of {url} is corrupt ({found}, expected {size} bytes with SHA-256 {sha256}); deleted it"
        )
    os.replace(part, dest)
    return dest
