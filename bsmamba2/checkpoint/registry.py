"""Known checkpoints (name → URLs, size, SHA-256), fetched into the cache on first use,
and the rule that decides which weights a command uses.

An entry's ``url`` and ``mirrors`` hold the same file: they are tried in order, and whatever
arrives must have the entry's size and SHA-256. ``hf://owner/repo/path`` names a file of a
Hugging Face Hub repository (resolved by ``huggingface_hub`` when installed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bsmamba2.checkpoint.download import DownloadError, download
from bsmamba2.checkpoint.remote import HF_PREFIX, fetch_remote, hub_parts, is_remote
from bsmamba2.errors import BSMamba2Error


@dataclass(frozen=True)
class KnownCheckpoint:
    name: str
    url: str
    size: int
    sha256: str
    about: str
    training_data: str = "unknown"
    licence: str = "unknown"
    mirrors: tuple[str, ...] = ()  # the same file elsewhere (https:// or hf://), tried after url
    mixer: str = "mamba2"  # the model's sequence mixer (bsmamba2.model.mixers)
    targets: tuple[str, ...] = ("vocals",)  # the stems it separates

    @property
    def path(self) -> Path:
        """Where the file is (or goes) in the cache."""
        return cache_dir() / self.filename

    @property
    def cached(self) -> bool:
        """Whether the whole file is in the cache."""
        return self.path.is_file() and self.path.stat().st_size == self.size

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.mirrors)

    def describe(self) -> dict[str, object]:
        """What ``--list-models`` shows: the entry, where it is cached and whether it is there."""
        return {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "training_data": self.training_data,
            "licence": self.licence,
            "about": self.about,
            "url": self.url,
            "mirrors": list(self.mirrors),
            "path": str(self.path),
            "cached": self.cached,
        }


KNOWN: dict[str, KnownCheckpoint] = {
    c.name: c
    for c in (
        KnownCheckpoint(
            name="bs_mamba2_vocals",
            url="https://github.com/ZFTurbo/Music-Source-Separation-Training/releases/download/v1.0.19/bs_mamba2_vocals.ckpt",
            size=192_610_602,
            sha256="fceb733b41742abb8df563092f4cb5bbc9243c6c03e7f34dc44c14e60732c72f",
            about="vocals; paper-size BSMamba2 trained by ZFTurbo on MUSDB18 (MSST release v1.0.19)",
            training_data="MUSDB18",
            licence="research use: MUSDB18's songs are for academic, non-commercial use only",
        ),
    )
}


def cache_dir() -> Path:
    """``$BSMAMBA2_CACHE``, else ``~/.cache/bsmamba2``."""
    return Path(os.environ.get("BSMAMBA2_CACHE") or "~/.cache/bsmamba2").expanduser()


def fetch(name_or_entry: str | KnownCheckpoint, progress: bool = True) -> Path:
    """The local path of a known checkpoint, downloaded (resumable, verified) if missing."""
    entry = name_or_entry
    if isinstance(entry, str):
        if entry not in KNOWN:
            raise BSMamba2Error(f"unknown model {entry!r} (known: {', '.join(KNOWN)})")
        entry = KNOWN[entry]
    dest = entry.path
    failures = []
    for url in entry.urls:
        try:
            return download(resolve_url(url), dest, entry.size, entry.sha256, progress)
        except DownloadError as exc:
            failures.append(str(exc))
    raise DownloadError(
        f"{'; '.join(failures)}. Without a network here: download {entry.url} by hand to {dest}, "
        "or pass --checkpoint PATH to weights you have"
    )


def resolve_url(url: str) -> str:
    """An ``https://`` URL for ``url``: ``hf://owner/repo/path/file`` becomes the file's address
    on the Hugging Face Hub (through ``huggingface_hub`` when installed), others stay as they are."""
    if not url.startswith(HF_PREFIX):
        return url
    repo_id, filename, revision = hub_parts(url)
    try:
        from huggingface_hub import hf_hub_url
    except ImportError:
        return f"https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{filename}"
    return hf_hub_url(repo_id=repo_id, filename=filename, revision=revision)


def resolve(name_or_path: str | os.PathLike, progress: bool = True) -> Path:
    """A checkpoint path as it is; a known name (``"bs_mamba2_vocals"``) that is not also an
    existing file: its local copy, downloaded if missing; an ``https://``, ``http://`` or
    ``hf://`` address (optionally ``#sha256=HEX``): its cached copy, fetched if missing
    (:mod:`.remote`)."""
    if is_remote(name_or_path):
        return fetch_remote(name_or_path, cache_dir(), progress)
    if isinstance(name_or_path, str) and name_or_path in KNOWN and not Path(name_or_path).exists():
        return fetch(name_or_path, progress)
    return Path(name_or_path)


def no_weights_message() -> str:
    names = ", ".join(f"{c.name} ({c.size / 1e6:.0f} MB)" for c in KNOWN.values())
    return (
        "no model weights: pass --checkpoint PATH (any BSMamba2 checkpoint), or --model NAME to download a "
        f"known one into {cache_dir()} ({names}), or set BSMAMBA2_CHECKPOINT to a path or a known name"
    )


def resolve_weights(checkpoint: str | None = None, model: str | None = None, progress: bool = True) -> Path:
    """--checkpoint (a path, a known name or an address), else --model (downloaded), else
    ``$BSMAMBA2_CHECKPOINT`` (the same kinds as --checkpoint)."""
    if checkpoint:
        return resolve(checkpoint, progress)
    if model:
        return fetch(model, progress)
    default = os.environ.get("BSMAMBA2_CHECKPOINT")
    if default:
        return resolve(default, progress)
    raise BSMamba2Error(no_weights_message())
