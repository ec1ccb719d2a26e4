"""Known checkpoints: resumable, verified downloads from a loopback HTTP server; weight choice."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bsmamba2.errors import BSMamba2Error
from bsmamba2.separation import registry
from bsmamba2.separation.download import DownloadError
from bsmamba2.separation.registry import KNOWN, KnownCheckpoint, fetch, resolve_weights
from tests.helpers.http import PAYLOAD


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BSMAMBA2_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _entry(url: str, sha256: str | None = None) -> KnownCheckpoint:
    return KnownCheckpoint("test", url, len(PAYLOAD), sha256 or hashlib.sha256(PAYLOAD).hexdigest(), "test")


def test_interrupted_download_resumes(server, cache):
    server.cut_after = 1_000_000
    entry = _entry(server.url)
    with pytest.raises(DownloadError, match=r"interrupted at 1000000 of .* run the command again to resume"):
        fetch(entry, progress=False)
    assert not (cache / "weights.ckpt").exists()
    assert (cache / "weights.ckpt.part").stat().st_size == 1_000_000
    path = fetch(entry, progress=False)
    assert server.ranges == [None, "bytes=1000000-"]
    assert path == cache / "weights.ckpt" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in cache.iterdir()) == ["weights.ckpt"]
    assert fetch(entry, progress=False) == path and len(server.ranges) == 2  # cached: no request


def test_server_ignoring_ranges_restarts_cleanly(server, cache):
    server.cut_after = 500_000
    server.honour_range = False
    entry = _entry(server.url)
    with pytest.raises(DownloadError):
        fetch(entry, progress=False)
    assert fetch(entry, progress=False).read_bytes() == PAYLOAD


def test_sha_mismatch_leaves_no_cached_file(server, cache):
    entry = _entry(server.url, sha256="0" * 64)
    with pytest.raises(DownloadError, match=r"corrupt .*deleted it"):
        fetch(entry, progress=False)
    assert list(cache.iterdir()) == []


def test_unreachable_server_is_a_one_line_error(cache):
    entry = _entry("http://127.0.0.1:9/nothing.ckpt")
    with pytest.raises(DownloadError) as info:
        fetch(entry, progress=False)
    assert "\n" not in str(info.value)


def test_known_msst_checkpoint_matches_the_spec():
    entry = KNOWN["bs_mamba2_vocals"]
    assert entry.url.endswith(
        "/ZFTurbo/Music-Source-Separation-Training/releases/download/v1.0.19/bs_mamba2_vocals.ckpt"
    )
    assert entry.size == 192_610_602
    assert entry.sha256 == "fceb733b41742abb8df563092f4cb5bbc9243c6c03e7f34dc44c14e60732c72f"


def test_weight_resolution_order(tmp_path, cache, monkeypatch):
    fake = _entry("http://unused")
    monkeypatch.setitem(KNOWN, "test", fake)
    monkeypatch.setattr(registry, "download", lambda url, dest, size, sha, progress: Path(dest))
    monkeypatch.setenv("BSMAMBA2_CHECKPOINT", str(tmp_path / "env.ckpt"))
    assert resolve_weights("given.ckpt", None) == Path("given.ckpt")
    assert resolve_weights(None, "test") == cache / "unused"
    assert resolve_weights(None, None) == tmp_path / "env.ckpt"
    monkeypatch.setenv("BSMAMBA2_CHECKPOINT", "test")
    assert resolve_weights(None, None) == cache / "unused"
    with pytest.raises(BSMamba2Error, match="unknown model 'nope'"):
        resolve_weights(None, "nope")
    monkeypatch.delenv("BSMAMBA2_CHECKPOINT")
    with pytest.raises(BSMamba2Error, match="no model weights"):
        resolve_weights(None, None)


def test_cache_dir_default(monkeypatch):
    monkeypatch.delenv("BSMAMBA2_CACHE", raising=False)
    assert registry.cache_dir() == Path.home() / ".cache" / "bsmamba2"
