"""Known checkpoints: resumable, verified downloads from a loopback HTTP server; weight choice."""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import pytest

from bsmamba2.checkpoint import registry
from bsmamba2.checkpoint.download import DownloadError, ssl_context
from bsmamba2.checkpoint.registry import KNOWN, KnownCheckpoint, fetch, resolve_weights
from bsmamba2.errors import BSMamba2Error
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


def test_mirrors_are_tried_in_order_and_the_failure_says_what_to_do(server, cache):
    good = hashlib.sha256(PAYLOAD).hexdigest()
    dead = "http://127.0.0.1:9/weights.ckpt"
    entry = KnownCheckpoint("test", dead, len(PAYLOAD), good, "test", mirrors=(server.url,))
    assert fetch(entry, progress=False).read_bytes() == PAYLOAD  # the first URL fails, the mirror serves
    (cache / "weights.ckpt").unlink()
    offline = KnownCheckpoint("test", dead, len(PAYLOAD), good, "test", mirrors=(dead.replace(":9", ":7"),))
    with pytest.raises(DownloadError) as info:
        fetch(offline, progress=False)
    message = str(info.value)
    assert "\n" not in message and message.count("download of http://127.0.0.1:") == 2
    assert f"download {dead} by hand to {cache / 'weights.ckpt'}, or pass --checkpoint PATH" in message
    assert "run the command again to resume" not in message  # nothing to resume: it never connected


def test_hf_urls_name_a_file_of_the_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    assert registry.resolve_url("hf://owner/repo/dir/w.ckpt") == "https://huggingface.co/owner/repo/resolve/main/dir/w.ckpt"
    assert registry.resolve_url("https://example.org/w.ckpt") == "https://example.org/w.ckpt"
    hub = types.ModuleType("huggingface_hub")
    hub.hf_hub_url = lambda repo_id, filename, revision=None: f"https://mirror.example/{repo_id}/{filename}"
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)  # installed: it decides (endpoints, revisions)
    assert registry.resolve_url("hf://owner/repo/w.ckpt") == "https://mirror.example/owner/repo/w.ckpt"
    with pytest.raises(BSMamba2Error, match="expected hf://owner/repo/path/to/file"):
        registry.resolve_url("hf://owner/repo")


def test_certifi_supplies_the_certificates_when_installed(monkeypatch):
    certifi = pytest.importorskip("certifi")
    monkeypatch.setitem(sys.modules, "certifi", None)
    assert ssl_context() is None  # Python's own store
    monkeypatch.setitem(sys.modules, "certifi", certifi)
    assert ssl_context().cert_store_stats()["x509_ca"] > 50  # certifi's bundle, loaded


def test_download_only_fetches_and_prints_the_path(server, cache, capsys, monkeypatch):
    from bsmamba2.cli.main import main

    monkeypatch.setitem(KNOWN, "test", _entry(server.url))
    assert main(["separate", "--model", "test", "--download-only", "-q"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == cache / "weights.ckpt" and path.read_bytes() == PAYLOAD


def test_a_known_name_is_resolved_by_load_model_separator_and_the_commands(tmp_path, cache, monkeypatch):
    """load_model("bs_mamba2_vocals"), Separator("bs_mamba2_vocals") and --checkpoint NAME
    take the known checkpoint from the cache (downloaded on first use), as --model does."""
    import numpy as np
    import soundfile as sf

    from bsmamba2 import BSMamba2, Separator, load_model, save_model
    from bsmamba2.cli.main import main
    from tests.helpers.configs import MICRO

    entry = KNOWN["bs_mamba2_vocals"]
    weights = cache / entry.filename
    weights.parent.mkdir(parents=True)
    save_model(BSMamba2(MICRO), weights)
    asked = []
    monkeypatch.setattr(registry, "download", lambda url, dest, size, sha, progress: asked.append(url) or Path(dest))
    assert load_model("bs_mamba2_vocals").config == MICRO
    sep = Separator("bs_mamba2_vocals", device="cpu", segment=0.5, progress=False)
    assert sep.name == "bs_mamba2_vocals" and sep.config == MICRO
    assert asked == [entry.url, entry.url]
    sf.write(tmp_path / "a.wav", np.zeros((8000, 2), np.float32) + 0.1, 44100, subtype="FLOAT")
    argv = ["separate", str(tmp_path / "a.wav"), "-o", str(tmp_path / "out"), "-q", "--segment", "0.5"]
    assert main([*argv, "--checkpoint", "bs_mamba2_vocals"]) == 0
    assert (tmp_path / "out" / "a" / "vocals.wav").is_file()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bs_mamba2_vocals").write_bytes(b"a file of that name wins")
    assert registry.resolve("bs_mamba2_vocals") == Path("bs_mamba2_vocals")
