"""Users' own weights by address: ``--checkpoint https://…#sha256=…`` from a loopback HTTP server
(cached, verified, loaded by the safe loader), and ``hf://`` through the real huggingface_hub
pointed at the same server by its own ``HF_ENDPOINT``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bsmamba2 import BSMamba2, load_model, save_model
from bsmamba2.checkpoint.download import DownloadError
from bsmamba2.checkpoint.registry import resolve_weights
from bsmamba2.cli.main import main
from bsmamba2.errors import BSMamba2Error
from tests.helpers.configs import MICRO

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BSMAMBA2_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def model() -> BSMamba2:
    torch.manual_seed(7)
    return BSMamba2(MICRO)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, model) -> bytes:
    """A real checkpoint (our safetensors format) as the server's bytes."""
    path = tmp_path_factory.mktemp("w") / "mine.safetensors"
    save_model(model, path)
    return path.read_bytes()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_a_url_with_its_hash_is_fetched_once_verified_and_loaded_safely(server, cache, weights, model):
    server.files["/people/mine.safetensors"] = weights
    url = server.url.replace("/weights.ckpt", "/people/mine.safetensors")
    address = f"{url}#sha256={hashlib.sha256(weights).hexdigest().upper()}"
    path = resolve_weights(address, progress=False)
    assert path.parent.parent == cache / "url" and path.name == "mine.safetensors"
    assert path.read_bytes() == weights and _files(cache) == ["mine.safetensors"]
    loaded = load_model(path).state_dict()
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    asked = len(server.requests)
    assert resolve_weights(address, progress=False) == path and len(server.requests) == asked  # cached


def test_a_url_without_a_hash_is_checked_against_the_announced_size(server, cache):
    server.cut_after = 1000
    with pytest.raises(DownloadError, match=r"interrupted at 1000 of 3145745 bytes"):
        resolve_weights(server.url, progress=False)
    assert _files(cache) == ["weights.ckpt.part"]  # resumable, never under the final name
    path = resolve_weights(server.url, progress=False)
    assert server.ranges[-1] == "bytes=1000-" and path.read_bytes() == server.files["/weights.ckpt"]


def test_a_hash_asked_for_later_checks_the_cached_copy(server, cache):
    path = resolve_weights(server.url, progress=False)  # cached without a hash
    asked = len(server.requests)
    good = hashlib.sha256(server.files["/weights.ckpt"]).hexdigest()
    assert resolve_weights(f"{server.url}#sha256={good}", progress=False) == path
    assert len(server.requests) == asked  # the copy matches: no transfer
    path.write_bytes(b"changed on disk")
    assert resolve_weights(f"{server.url}#sha256={good}", progress=False).read_bytes() == server.files["/weights.ckpt"]
    assert len(server.requests) == asked + 1  # fetched again


def test_a_wrong_hash_is_one_line_and_nothing_is_cached(server, cache, capsys):
    code = main(["separate", "--download-only", "-q", "--checkpoint", f"{server.url}#sha256={'0' * 64}"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert f"download of {server.url} is corrupt" in err and "with SHA-256 " + "0" * 64 in err
    assert _files(cache) == []


def test_a_missing_file_is_one_line_with_the_url(server, cache, capsys):
    url = server.url.replace("weights", "missing")
    assert main(["separate", "--download-only", "-q", "--checkpoint", url]) == 1
    err = capsys.readouterr().err
    assert err == f"bsmamba2: error: download of {url} failed: HTTP 404 Not Found\n"
    assert _files(cache) == []


def test_bad_addresses_are_one_line_errors(cache):
    with pytest.raises(BSMamba2Error, match="the only fragment understood is #sha256="):
        resolve_weights("https://example.org/w.ckpt#md5=abc")
    with pytest.raises(BSMamba2Error, match="expected hf://owner/repo/path/to/file"):
        resolve_weights("hf://owner/repo")


def test_hf_without_huggingface_hub_names_the_extra(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(BSMamba2Error, match=r"needs huggingface_hub, .*pip install 'bsmamba2\[hub\]'"):
        resolve_weights("hf://owner/repo/w.ckpt")


def _download_only(address: str, server, tmp_path: Path) -> subprocess.CompletedProcess:
    """``separate --download-only --checkpoint ADDRESS`` with huggingface_hub's endpoint on the
    loopback server (HF_ENDPOINT is read when huggingface_hub is imported: a fresh process)."""
    env = {
        **os.environ,
        "HF_ENDPOINT": server.url.rsplit("/", 1)[0],
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "BSMAMBA2_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "bsmamba2", "separate", "--download-only", "-q", "--checkpoint", address]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_hf_addresses_resolve_through_huggingface_hub(server, tmp_path, weights):
    pytest.importorskip("huggingface_hub")
    served = "/people/voc/resolve/v2/dir/mine.safetensors"
    server.files[served] = weights
    server.headers[served] = {"X-Repo-Commit": "c" * 40, "ETag": f'"{hashlib.sha1(weights).hexdigest()}"'}
    sha = hashlib.sha256(weights).hexdigest()
    done = _download_only(f"hf://people/voc@v2/dir/mine.safetensors#sha256={sha}", server, tmp_path)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.is_relative_to(tmp_path / "hf") and path.read_bytes() == weights  # huggingface_hub's cache
    assert ("GET", served) in server.requests
    load_model(path)

    wrong = _download_only(f"hf://people/voc@v2/dir/mine.safetensors#sha256={'1' * 64}", server, tmp_path)
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1
    assert f"SHA-256 {sha}, expected {'1' * 64}; not using it" in wrong.stderr

    missing = _download_only("hf://people/voc/nothing.ckpt", server, tmp_path)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1, missing.stderr
    assert missing.stderr.startswith("bsmamba2: error: download of hf://people/voc/nothing.ckpt failed (")
    assert "404" in missing.stderr and "/people/voc/resolve/main/nothing.ckpt" in missing.stderr
