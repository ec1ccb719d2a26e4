"""SeparatorPool, the worker processes behind ``separate -j`` and ``--devices``, from Python:
one worker per device, progress of every worker, largest files first, existing outputs
skipped, a worker that dies fails only its file, a bad setting is the library's ParameterError."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bsmamba2 import BSMamba2, save_model
from bsmamba2.errors import ParameterError
from bsmamba2.separation import FileJob, SeparatorPool
from bsmamba2.separation.pool import _interrupt, _stopping, largest_first
from tests.helpers.configs import MICRO


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "micro.safetensors"
    save_model(BSMamba2(MICRO), path)
    return path


@pytest.fixture(autouse=True)
def _two_threads_in_all(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the workers' torch: 2 // 2 threads each


def _wav(path: Path, seconds: float = 0.6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (np.random.randn(int(seconds * 44100), 2) * 0.2).astype(np.float32), 44100, subtype="FLOAT")
    return path


def _spawned_children() -> list[int]:
    """This process's workers: its children started by multiprocessing's spawn (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == os.getpid() and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


def test_one_worker_per_device_reports_and_progress(tmp_path, ckpt):
    songs = [_wav(tmp_path / "in" / f"{name}.wav") for name in ("a", "b")]
    jobs = [FileJob(p, tmp_path / "out", {"fmt": "wav"}) for p in songs]
    _wav(songs[0], seconds=1.0)
    assert [job.path for job in largest_first(jobs)] == [songs[0], songs[1]]
    _wav(songs[1], seconds=2.0)
    assert [job.path for job in largest_first(jobs)] == [songs[1], songs[0]]  # the largest first
    seen = []
    with SeparatorPool(ckpt, ["cpu", "cpu"], segment=0.5) as pool:
        assert pool.outputs == ["vocals", "accompaniment"] and pool.name == "micro"
        reports = list(pool.run(jobs, on_progress=seen.append))
        written = {p: p.read_bytes() for p in sorted((tmp_path / "out").rglob("*.wav"))}
        again = list(pool.run(jobs))  # the outputs exist: skipped, as in one process
    assert sorted(r.input for r in reports) == sorted(str(p) for p in songs)
    assert all(r.status == "separated" and set(r.outputs) == {"vocals", "accompaniment"} for r in reports)
    assert {p.file for p in seen} == {str(p) for p in songs} and all(p.stage for p in seen)
    assert [r.status for r in again] == ["skipped", "skipped"] and all("exists" in r.error for r in again)
    assert [r.outputs for r in sorted(again, key=lambda r: r.input)] == [
        r.outputs for r in sorted(reports, key=lambda r: r.input)
    ]
    assert len(written) == 4 and all(p.read_bytes() == data for p, data in written.items())
    with pytest.raises(ParameterError, match="overlap") as info, SeparatorPool(ckpt, ["cpu"], overlap=1.5):
        pass
    assert info.value.parameter == "overlap"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc")
def test_a_worker_that_dies_fails_only_its_file(tmp_path, ckpt):
    songs = [_wav(tmp_path / "in" / f"{name}.wav", seconds=s) for name, s in (("a", 6), ("b", 6), ("c", 0.5))]
    jobs = [FileJob(p, tmp_path / "out", {}) for p in songs]
    running: set[str] = set()
    killed = []

    def kill_one_when_both_run(progress) -> None:
        running.add(progress.file)
        if len(running) == 2 and not killed:  # a and b are being separated, one per worker
            killed.append(_spawned_children()[0])
            os.kill(killed[0], signal.SIGKILL)

    with SeparatorPool(ckpt, ["cpu", "cpu"], segment=0.5, shifts=4) as pool:
        reports = {Path(r.input).name: r for r in pool.run(jobs, on_progress=kill_one_when_both_run)}
    assert killed and sorted(reports) == ["a.wav", "b.wav", "c.wav"]
    failed = [r for r in reports.values() if r.status == "failed"]
    assert len(failed) == 1 and "died (exit code -9)" in failed[0].error
    assert Path(failed[0].input).name in ("a.wav", "b.wav")
    assert reports["c.wav"].status == "separated"  # the other worker took the rest


def test_a_worker_stops_at_the_first_signal_and_ignores_the_next_ones():
    """Ctrl-C reaches a worker, then the parent's SIGTERM: the second must not cut short the
    cleanup the first started (a track folder was left behind that way)."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGTERM) is _stopping
        assert signal.getsignal(signal.SIGINT) is _stopping
        os.kill(os.getpid(), signal.SIGTERM)  # does nothing now: no exception, the test goes on
        os.kill(os.getpid(), signal.SIGINT)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
