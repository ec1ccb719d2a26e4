"""Atomic output: all or nothing, normal permissions."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bsmamba2.fileio import (
    WriteError,
    atomic_path,
    atomic_write,
    atomic_write_text,
    fcntl,
    remove_stale_temporaries,
)


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_text(target, "old")

    def explode(f):
        f.write(b"half of the new")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_success_replaces_with_umask_permissions(tmp_path):
    target = tmp_path / "deep" / "dir" / "x.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".x.bin.")
        tmp.write_bytes(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_failure_removes_the_folders_it_made_and_no_others(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError), atomic_path(kept / "new" / "deeper" / "x.bin") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept"]


def test_file_system_errors_say_what_failed_and_where(tmp_path, monkeypatch):
    target = tmp_path / "out" / "x.json"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(WriteError) as info:
        atomic_write_text(target, "x")
    assert str(info.value) == f"no space left on device writing {target}" and info.value.errno == errno.ENOSPC
    assert isinstance(info.value, OSError) and not (tmp_path / "out").exists()


KILLED_WRITER = """
import os, signal, sys
from bsmamba2.fileio import atomic_path
with atomic_path(sys.argv[1], suffix=".part") as tmp:
    tmp.write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(fcntl is None, reason="no flock: leftovers are never removed automatically")
def test_stale_temporaries_of_a_killed_writer_go_live_ones_stay(tmp_path):
    target = tmp_path / "vocals.wav"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], env=env)
    assert run.returncode == -signal.SIGKILL
    (stale,) = tmp_path.glob(".vocals.wav.*.part")
    (tmp_path / ".other.wav.abcdefgh.part").write_bytes(b"another target's")
    (tmp_path / "notes.txt").write_text("not ours")
    with atomic_path(target, suffix=".part") as live:
        live.write_bytes(b"being written")
        assert remove_stale_temporaries(target) == [stale]
        assert live.exists() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.wav.abcdefgh.part", "notes.txt", "vocals.wav"]
