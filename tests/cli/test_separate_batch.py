"""``bsmamba2 separate`` over many files: ``--json`` and ``--report`` lines, ``-j N`` /
``--devices`` worker processes (the same bits as one worker, errors isolated, SIGTERM stopping
every worker with no partial output) and ``--shard I/N``. The pool itself: tests/separation/test_pool.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bsmamba2 import BSMamba2, save_model
from bsmamba2.cli.main import main
from bsmamba2.cli.separate import shard
from tests.helpers.configs import MICRO

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--segment", "0.5", "--device", "cpu"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "micro.safetensors"
    save_model(BSMamba2(MICRO), path)
    return path


@pytest.fixture
def one_thread_here():
    """This process's model on one thread, as each of two workers on two threads in all."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _wav(path: Path, seconds: float = 0.6, gain: float = 0.2, rate: int = 44100) -> Path:
    x = (np.random.randn(int(seconds * rate), 2) * gain).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate, subtype="FLOAT")
    return path


def _nan_wav(path: Path) -> Path:
    """Readable header, NaN samples inside: fails while separating, after the model loaded."""
    x = np.random.randn(44100, 2).astype(np.float32) * 0.1
    x[30000] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, 44100, subtype="FLOAT")
    return path


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]  # fails on any line that is not JSON


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_json_lines_on_stdout_and_the_same_lines_in_the_report(tmp_path, ckpt, capsys):
    quiet, loud = _wav(tmp_path / "in" / "quiet.wav"), _wav(tmp_path / "in" / "loud.wav", gain=1.5)
    bad, out, report = _nan_wav(tmp_path / "in" / "bad.wav"), tmp_path / "out", tmp_path / "report.jsonl"
    missing = str(tmp_path / "in" / "missing.wav")
    argv = ["separate", str(quiet), str(loud), str(bad), missing, "-o", str(out), "--checkpoint", str(ckpt), *FAST]
    assert main([*argv, "--json", "--report", str(report), "--bit-depth", "16"]) == 1
    captured = capsys.readouterr()
    lines = _json_lines(captured.out)
    assert report.read_text() == captured.out  # the same lines, nothing else on stdout
    assert "1 failed" not in captured.out and "2 separated, 0 skipped, 2 failed" in captured.err
    by_input = {Path(line["input"]).name: line for line in lines}
    assert sorted(by_input) == ["bad.wav", "loud.wav", "missing.wav", "quiet.wav"]
    assert by_input["missing.wav"]["status"] == "failed" and "no such file" in by_input["missing.wav"]["error"]
    assert by_input["bad.wav"]["status"] == "failed" and "NaN" in by_input["bad.wav"]["error"]
    assert by_input["bad.wav"]["outputs"] == {}
    for name, clipped in (("quiet.wav", False), ("loud.wav", True)):
        line = by_input[name]
        assert line["status"] == "separated" and line["error"] is None
        assert line["outputs"] == {stem: str(out / name[:-4] / f"{stem}.wav") for stem in ("vocals", "accompaniment")}
        assert line["duration_s"] == pytest.approx(0.6, abs=1e-4) and line["wall_s"] > 0
        assert line["x_realtime"] == pytest.approx(line["duration_s"] / line["wall_s"], rel=1e-3)
        assert line["clipped"] is clipped and (line["clipped_stems"] != []) is clipped
        for stem, path in line["outputs"].items():
            data, _ = sf.read(path)
            assert sf.info(path).subtype == "PCM_16"
            if not clipped:  # the peak of what was written, to 16-bit rounding
                assert line["peak"][stem] == pytest.approx(np.abs(data).max(), abs=1 / 32768)
            assert line["peak_dbfs"][stem] == pytest.approx(20 * np.log10(line["peak"][stem]), abs=0.01)
        assert (max(line["peak"].values()) > 1) is clipped

    # Again: the outputs are there, so skipped; the report grows by appending.
    assert main([*argv[:3], "-o", str(out), "--checkpoint", str(ckpt), *FAST, "--json", "--report", str(report)]) == 0
    again = _json_lines(capsys.readouterr().out)
    assert [line["status"] for line in again] == ["skipped", "skipped"]
    assert "exists (use --overwrite to replace)" in again[0]["error"]
    assert _json_lines(report.read_text()) == lines + again


def test_an_unwritable_report_is_one_line_before_any_work(tmp_path, ckpt, capsys):
    song = _wav(tmp_path / "song.wav")
    report = tmp_path / "no" / "such" / "folder" / "r.jsonl"
    argv = ["separate", str(song), "-o", str(tmp_path / "out"), "--checkpoint", str(ckpt), "--report", str(report)]
    assert main(argv) == 1
    assert capsys.readouterr().err == f"bsmamba2: error: --report {report}: no such file or directory\n"
    assert not (tmp_path / "out").exists()


def test_two_workers_write_the_same_bits_as_one_and_isolate_errors(
    tmp_path, ckpt, capsys, monkeypatch, one_thread_here
):
    songs = [_wav(tmp_path / "in" / f"song{i}.wav", seconds=s) for i, s in enumerate((0.4, 1.3, 0.7))]
    bad = _nan_wav(tmp_path / "in" / "bad.wav")
    inputs = [str(p) for p in (*songs, bad)]
    common = ["--checkpoint", str(ckpt), *FAST, "--json", "--format", "flac"]
    assert main(["separate", *inputs, "-o", str(tmp_path / "one"), *common]) == 1
    one = _json_lines(capsys.readouterr().out)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # each of the two workers: 2 // 2 threads, as here
    assert main(["separate", *inputs, "-o", str(tmp_path / "two"), *common, "-j", "2"]) == 1
    captured = capsys.readouterr()
    two = _json_lines(captured.out)
    assert _files(tmp_path / "two") == _files(tmp_path / "one")  # bit for bit
    assert len(_files(tmp_path / "two")) == 6
    status = {Path(line["input"]).name: line["status"] for line in two}
    assert status == {"song0.wav": "separated", "song1.wav": "separated", "song2.wav": "separated", "bad.wav": "failed"}
    assert sorted(line["input"] for line in two) == sorted(line["input"] for line in one)
    assert "NaN" in next(line["error"] for line in two if line["status"] == "failed")
    assert "3 separated, 0 skipped, 1 failed" in captured.err


def test_worker_options_are_one_line_errors(tmp_path, ckpt, capsys):
    song = _wav(tmp_path / "song.wav")
    base = ["separate", str(song), "-o", str(tmp_path / "out"), "--checkpoint", str(ckpt)]
    assert main([*base, "-j", "2", "--devices", "cpu,cpu"]) == 1
    assert "--jobs and --devices both choose the workers" in capsys.readouterr().err
    assert main([*base, "--devices", "cpu,,cpu"]) == 1
    assert "expected a list such as 0,1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*base, "--devices", "all"]) == 1
        assert "--devices all: no CUDA device here" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--shard", "4/4"])
    assert "expected I/N with 0 <= I < N" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shards_are_disjoint_and_cover_every_input(tmp_path, ckpt, capsys):
    files = [tmp_path / name for name in ("c.wav", "a.wav", "e.wav", "b.wav", "d.wav", "f.wav", "g.wav")]
    parts = [shard(files, i, 3) for i in range(3)]
    assert sorted(p for part in parts for p in part) == sorted(files)
    assert sum(len(part) for part in parts) == len(files)
    assert parts == [shard(list(reversed(files)), i, 3) for i in range(3)]  # the argument order does not matter
    folder = tmp_path / "in"
    for name in ("x", "y", "z"):
        _wav(folder / f"{name}.wav", seconds=0.3)
    done = []
    for i in range(2):
        argv = ["separate", str(folder), "-o", str(tmp_path / "out"), "--checkpoint", str(ckpt), *FAST]
        assert main([*argv, "--json", "--shard", f"{i}/2"]) == 0
        done.append([Path(line["input"]).name for line in _json_lines(capsys.readouterr().out)])
    assert done == [["x.wav", "z.wav"], ["y.wav"]]


def _workers(pid: int) -> list[int]:
    """The worker processes of ``pid``: its children started by multiprocessing's spawn (not
    its resource tracker), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT back to its default in the child, as a terminal has it: a test run started in the
    background of a shell (``cmd &``) ignores SIGINT, the command would inherit that and rightly
    go on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
@pytest.mark.parametrize(
    "stop, code, said, jobs",
    [("sigterm", 143, "terminated", 2), ("ctrl-c", 130, "interrupted", 2), ("sigterm", 143, "terminated", 1)],
)
def test_stopping_stops_every_worker_and_leaves_no_partial_output(tmp_path, ckpt, stop, code, said, jobs):
    """SIGTERM reaches the command only (it stops the workers); Ctrl-C reaches the whole
    process group of a terminal, workers included. In one process (``jobs`` 1): the file
    being written removed, the one before kept whole (tests/separation/test_threads.py
    stops two overlapping files, as on CUDA)."""
    songs = [_wav(tmp_path / "in" / f"{name}.wav", seconds=8 if jobs == 2 else 1) for name in ("a", "b", "c")]
    if jobs == 1:  # a is short, b long: the stop comes while b is written
        songs[1] = _wav(tmp_path / "in" / "b.wav", seconds=8)
    out = tmp_path / "out"
    argv = ["separate", *map(str, songs[:2] if jobs == 2 else songs), "-o", str(out), "--checkpoint", str(ckpt),
            *FAST, "-q", "-j", str(jobs)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.Popen(  # --tta --shifts 6: 18 passes over each file, long enough to stop half-way
        [sys.executable, "-m", "bsmamba2", *argv, "--tta", "--shifts", "6"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    deadline = time.monotonic() + 180
    # both workers writing; in one process: b
    while len(list(out.glob("*/.*.part" if jobs == 2 else "b/.*.part"))) < 2 * jobs:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the workers did not start writing"
        time.sleep(0.05)
    workers = _workers(proc.pid)
    assert len(workers) == (jobs if jobs > 1 else 0)
    if stop == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip() == f"bsmamba2: {said}"
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == ["a", "a/accompaniment.wav", "a/vocals.wav"][: 3 * (jobs == 1)]  # no partial file
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
