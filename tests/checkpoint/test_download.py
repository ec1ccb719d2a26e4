"""Two processes fetching the same known checkpoint at once: one download, both succeed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bsmamba2.checkpoint import download as download_module
from bsmamba2.checkpoint.download import download_lock
from tests.helpers.http import PAYLOAD

FETCH = (
    "import sys; from bsmamba2.checkpoint.registry import KnownCheckpoint, fetch; "
    "print(fetch(KnownCheckpoint('test', sys.argv[1], int(sys.argv[2]), sys.argv[3], 'test')))"
)


@pytest.mark.skipif(download_module.fcntl is None, reason="no fcntl: downloads are not locked here")
def test_concurrent_fetches_download_once(server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {**os.environ, "BSMAMBA2_CACHE": str(cache)}
    argv = [sys.executable, "-c", FETCH, server.url, str(len(PAYLOAD)), hashlib.sha256(PAYLOAD).hexdigest()]
    # Hold the lock so both processes are certainly waiting on it together, then let go.
    with download_lock(cache / "weights.ckpt", progress=False):
        procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        for proc in procs:  # each says it is waiting before it blocks
            line = proc.stderr.readline()
            assert "waiting for another process downloading weights.ckpt" in line, line
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    assert [Path(out.strip()) for out, _ in results] == [cache / "weights.ckpt"] * 2
    assert len(server.ranges) == 1  # one transfer served both
    assert (cache / "weights.ckpt").read_bytes() == PAYLOAD
    assert sorted(p.name for p in cache.iterdir()) == ["weights.ckpt"]  # no .lock or .part left


@pytest.mark.skipif(download_module.fcntl is None, reason="no fcntl: downloads are not locked here")
def test_lock_excludes_threads_of_other_holders(tmp_path):
    """A second holder waits until the first lets go (flock is per open file, so threads
    with their own descriptors exclude each other like processes do)."""
    dest = tmp_path / "weights.ckpt"
    events: list[str] = []
    inside = threading.Event()

    def second() -> None:
        inside.wait()
        with download_lock(dest, progress=False):
            events.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with download_lock(dest, progress=False):
        inside.set()
        thread.join(timeout=0.5)
        assert thread.is_alive()  # blocked on the lock
        events.append("first")
    thread.join(timeout=10)
    assert events == ["first", "second"]
    assert list(tmp_path.iterdir()) == []
