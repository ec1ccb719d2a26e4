"""Atomic output: all or nothing, normal permissions."""

from __future__ import annotations

import os

import pytest

from bsmamba2.fileio import atomic_path, atomic_write, atomic_write_text


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
