"""Users' own weights by address: ``--checkpoint https://…`` (or ``http://``) and
``--checkpoint hf://owner/repo/path/file`` (a file of a Hugging Face Hub repository).

A plain URL is downloaded once into the cache (``$BSMAMBA2_CACHE/url/<key>/<file name>``)
by the resumable, locked download of :mod:`.download`, checked against the size the server
announces; an ``hf://`` address is fetched by ``huggingface_hub`` into its own cache (its
token, mirrors and ``HF_ENDPOINT`` apply). Either can carry the file's SHA-256 as a URL
fragment, ``…/file.ckpt#sha256=HEX``: then a file that does not match is an error and is not
kept. The result is a local path, which :func:`~bsmamba2.checkpoint.load_model` reads as it
reads any checkpoint (no pickled code runs).
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from pathlib import Path

from bsmamba2.checkpoint.download import DownloadError, download, sha256_of
from bsmamba2.errors import BSMamba2Error, require_extra

HF_PREFIX = "hf://"
URL_PREFIXES = ("https://", "http://", HF_PREFIX)
_SHA256 = re.compile(r"sha256=([0-9a-fA-F]{64})")


def is_remote(name: object) -> bool:
    """Whether ``name`` is an address this module fetches (and not a local path)."""
    return isinstance(name, str) and name.lower().startswith(URL_PREFIXES)


def split_sha256(address: str) -> tuple[str, str | None]:
    """``address`` without its ``#sha256=HEX`` fragment, and the hash (lower case) or None."""
    base, hashmark, fragment = address.partition("#")
    if not hashmark:
        return address, None
    match = _SHA256.fullmatch(fragment)
    if not match:
        raise BSMamba2Error(f"{address}: the only fragment understood is #sha256= and 64 hex digits")
    return base, match.group(1).lower()


def cached_path(url: str, cache: Path) -> Path:
    """Where a plain URL's file is kept: one folder per URL (two URLs may share a file
    name), named by a hash of the URL, holding the file under the URL's own file name."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]) or "checkpoint"
    return cache / "url" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def fetch_remote(address: str, cache: Path, progress: bool = True) -> Path:
    """The local copy of ``address`` (an http(s):// URL or ``hf://``), fetched if missing."""
    url, sha256 = split_sha256(address)
    if url.startswith(HF_PREFIX):
        path = _from_hub(url, progress)
        if sha256 is not None and (found := sha256_of(path)) != sha256:
            raise DownloadError(
                f"{url}: SHA-256 {found}, expected {sha256}; not using it (remove {path} to fetch it again)"
            )
        return path
    return download(url, cached_path(url, cache), None, sha256, progress)


def hub_parts(url: str) -> tuple[str, str, str | None]:
    """``hf://owner/repo[@revision]/path/file`` as (``owner/repo``, ``path/file``, revision)."""
    owner, _, rest = url.removeprefix(HF_PREFIX).partition("/")
    repo, _, filename = rest.partition("/")
    repo, _, revision = repo.partition("@")
    if not (owner and repo and filename) or filename.endswith("/"):
        raise BSMamba2Error(f"{url}: expected hf://owner/repo/path/to/file (or hf://owner/repo@revision/…)")
    return f"{owner}/{repo}", filename, revision or None


def _from_hub(url: str, progress: bool) -> Path:
    """``hf://owner/repo/file`` downloaded by huggingface_hub (or found in its cache)."""
    repo_id, filename, revision = hub_parts(url)
    require_extra(f"{HF_PREFIX} checkpoints", "hub")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        while exc.__cause__ is not None:  # "not in the local cache" hides the server's answer
            exc = exc.__cause__
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DownloadError(f"download of {url} failed ({reason})") from None
