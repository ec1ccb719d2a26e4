"""``bsmamba2 separate`` when things go wrong around it (issue 13): a failing disk, a read-only
folder, SIGTERM and SIGKILL, logs without a terminal, framework warnings, inputs under the
output folder, --official with chunking options."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bsmamba2 import BSMamba2, save_model
from bsmamba2.cli.main import main
from tests.helpers.configs import MICRO

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--segment", "0.5", "--device", "cpu"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "micro.safetensors"
    save_model(BSMamba2(MICRO), path)
    return path


def _wav(path: Path, seconds: float = 0.6, rate: int = 44100) -> Path:
    x = (np.random.randn(int(seconds * rate), 2) * 0.2).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate, subtype="FLOAT")
    return path


def _leftovers(folder: Path) -> list[str]:
    """Everything under ``folder`` (files and folders), relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("TRITON_INTERPRET", None)
    return env


class _FullDisk:
    """soundfile's C library with a write that fails as on a full disk: libsndfile returns
    fewer frames, flags a system error and keeps the system's reason for ``sf_strerror``."""

    SFE_SYSTEM = 2

    def __init__(self, lib):
        self._lib, self._failed = lib, set()

    def __getattr__(self, name):
        return getattr(self._lib, name)

    def sf_writef_float(self, handle, data, frames):
        self._failed.add(handle)
        return 0

    def sf_error(self, handle):
        return self.SFE_SYSTEM if handle in self._failed else self._lib.sf_error(handle)

    def sf_strerror(self, handle):
        if handle in self._failed:
            return sf._ffi.new("char[]", b"System error : No space left on device.")
        return self._lib.sf_strerror(handle)


def test_full_disk_is_one_line_stops_the_batch_and_leaves_nothing(tmp_path, ckpt, capsys, monkeypatch):
    inputs = [_wav(tmp_path / "in" / f"{name}.wav") for name in ("a", "b", "c")]
    monkeypatch.setattr(sf, "_snd", _FullDisk(sf._snd))
    out = tmp_path / "out"
    code = main(["separate", *map(str, inputs), "-o", str(out), "--checkpoint", str(ckpt), *FAST, "-q"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err[0] == f"bsmamba2: error: no space left on device writing {out / 'a' / 'vocals.wav'}"
    assert err[1] == "bsmamba2: error: stopped: the other 2 files were not attempted"
    assert err[2] == "0 separated, 0 skipped, 1 failed, 2 not attempted" and len(err) == 3
    assert _leftovers(out) == []  # no partial file, no empty track folder


def test_a_real_failing_write_fails_that_file_and_the_others_are_attempted(tmp_path, ckpt):
    """The kernel refuses writes past RLIMIT_FSIZE (EFBIG): a real failure of write(2) under
    libsndfile. 'file too large' is not a full disk, so every input is tried."""
    inputs = [_wav(tmp_path / "in" / f"{name}.wav") for name in ("a", "b")]
    out = tmp_path / "out"

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    argv = ["separate", *map(str, inputs), "-o", str(out), "--checkpoint", str(ckpt), *FAST, "-q"]
    run = subprocess.run(
        [sys.executable, "-m", "bsmamba2", *argv],
        capture_output=True, text=True, env=_env(), preexec_fn=limit_file_size, timeout=300,
    )
    err = run.stderr.splitlines()
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert err == [
        f"bsmamba2: error: file too large writing {out / 'a' / 'vocals.wav'}",
        f"bsmamba2: error: file too large writing {out / 'b' / 'vocals.wav'}",
        "0 separated, 0 skipped, 2 failed",
    ]
    assert _leftovers(out) == []


def _can_mount_read_only(folder: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", f"mount -o bind,ro '{folder}' '{folder}'"],
        capture_output=True,
    )
    return probe.returncode == 0


def test_read_only_folder_says_what_failed_and_where(tmp_path, ckpt):
    out = tmp_path / "out"
    out.mkdir()
    if not _can_mount_read_only(out):
        pytest.skip("needs root and unshare to mount a read-only folder")
    inputs = [_wav(tmp_path / "in" / f"{name}.wav") for name in ("a", "b")]
    argv = ["separate", *map(str, inputs), "-o", str(out), "--checkpoint", str(ckpt), *FAST, "-q"]
    command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "bsmamba2", *argv])
    run = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -o bind,ro '{out}' '{out}' && exec {command}"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr and "Errno" not in run.stderr
    assert run.stderr.splitlines() == [
        f"bsmamba2: error: read-only file system writing {out / 'a' / 'vocals.wav'}",
        "bsmamba2: error: stopped: the other 1 file was not attempted",
        "0 separated, 0 skipped, 1 failed, 1 not attempted",
    ]
    assert _leftovers(out) == []


SLOW_RUN = textwrap.dedent(
    """
    import sys, time
    from bsmamba2.separation.engine import SegmentModel
    from bsmamba2.cli.main import main
    run = SegmentModel.__call__
    def slow(self, segments):  # long enough to be stopped half-way
        time.sleep(0.2)
        return run(self, segments)
    SegmentModel.__call__ = slow
    sys.exit(main(sys.argv[1:]))
    """
)


def _start_slow_run(tmp_path: Path, ckpt: Path, out: Path) -> subprocess.Popen:
    song = _wav(tmp_path / "in" / "song.wav", seconds=20)
    argv = ["separate", str(song), "-o", str(out), "--checkpoint", str(ckpt), *FAST, "-q"]
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )


def _wait_for_partial_outputs(proc: subprocess.Popen, folder: Path) -> None:
    deadline = time.monotonic() + 120
    while not list(folder.glob(".*.part")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no partial output appeared"
        time.sleep(0.05)


def test_sigterm_cleans_up_like_ctrl_c_and_exits_143(tmp_path, ckpt):
    out = tmp_path / "out"
    proc = _start_slow_run(tmp_path, ckpt, out)
    _wait_for_partial_outputs(proc, out / "song")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip() == "bsmamba2: terminated"
    assert _leftovers(out) == []


def test_the_next_run_removes_what_a_killed_run_left(tmp_path, ckpt, capsys):
    out = tmp_path / "out"
    proc = _start_slow_run(tmp_path, ckpt, out)
    _wait_for_partial_outputs(proc, out / "song")
    proc.kill()
    proc.wait(timeout=60)
    stale = _leftovers(out)
    assert any(name.endswith(".part") for name in stale)  # SIGKILL runs no cleanup
    song = tmp_path / "in" / "song.wav"
    assert main(["separate", str(song), "-o", str(out), "--checkpoint", str(ckpt), *FAST, "-q"]) == 0
    assert _leftovers(out) == ["song", "song/accompaniment.wav", "song/vocals.wav"]


def test_a_file_that_fails_leaves_no_empty_track_folder(tmp_path, ckpt, capsys):
    bad = tmp_path / "in" / "nan.wav"
    bad.parent.mkdir()
    x = np.zeros((44100, 2), np.float32)
    x[30000] = np.nan  # found while separating, after the outputs were opened
    sf.write(bad, x, 44100, subtype="FLOAT")
    out = tmp_path / "out"
    assert main(["separate", str(bad), "-o", str(out), "--checkpoint", str(ckpt), *FAST, "-q"]) == 1
    assert "NaN or infinite sample" in capsys.readouterr().err
    assert _leftovers(out) == []


def test_without_a_terminal_progress_is_plain_lines(tmp_path, ckpt):
    """stderr and stdout are pipes here, as in a log: no bars, no cursor codes."""
    inputs = [_wav(tmp_path / "in" / f"{name}.wav") for name in ("a", "b")]
    argv = ["separate", *map(str, inputs), "-o", str(tmp_path / "out"), "--checkpoint", str(ckpt), *FAST]
    run = subprocess.run(
        [sys.executable, "-m", "bsmamba2", *argv], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "\x1b" not in run.stdout + run.stderr and "\r" not in run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["a.wav", "b.wav", "2 separated, 0 skipped, 0 failed"]


def test_framework_warnings_once_and_not_with_quiet(tmp_path, ckpt, capsys, monkeypatch):
    from bsmamba2.separation.engine import SegmentModel

    run = SegmentModel.submit  # what the engine calls

    def noisy(self, segments):
        for _ in range(3):  # as a framework warns: from its own file
            __import__("warnings").warn_explicit("framework noise", UserWarning, torch.__file__, 1)
        return run(self, segments)

    monkeypatch.setattr(SegmentModel, "submit", noisy)
    song = _wav(tmp_path / "song.wav")
    argv = ["separate", str(song), "--checkpoint", str(ckpt), *FAST]
    assert main([*argv, "-o", str(tmp_path / "loud")]) == 0
    assert capsys.readouterr().err.count("bsmamba2: warning: framework noise") == 1
    assert main([*argv, "-o", str(tmp_path / "quiet"), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_compiling_does_not_print_torchs_deprecation_warnings():
    """Inductor imports torch.utils.mkldnn, whose torch.jit decorators warn 14 times."""
    code = textwrap.dedent(
        """
        import warnings
        import torch
        from bsmamba2 import BSMamba2
        from bsmamba2.separation.compiling import compile_blocks
        from tests.helpers.configs import MICRO
        model = BSMamba2(MICRO)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compile_blocks(model, torch.device("cpu"))
        print(sum("deprecated" in str(w.message) for w in caught))
        """
    )
    if shutil.which(os.environ.get("CXX") or "g++") is None:
        pytest.skip("compile_blocks needs a C++ compiler")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "0"


def test_inputs_under_the_output_folder_are_said_to_be_left_out(tmp_path, ckpt, capsys, monkeypatch):
    _wav(tmp_path / "song.wav")
    monkeypatch.chdir(tmp_path)
    assert main(["separate", ".", "-o", ".", "--checkpoint", str(ckpt), *FAST]) == 1
    err = capsys.readouterr().err
    assert err == (
        "bsmamba2: error: no audio files found in the inputs: 1 audio file under the output folder . "
        "left out (earlier outputs are never inputs; choose another -o to separate them)\n"
    )
    assert main(["separate", ".", "-o", "sep", "--checkpoint", str(ckpt), *FAST, "-q"]) == 0
    _wav(tmp_path / "new.wav")
    assert main(["separate", ".", "-o", "sep", "--checkpoint", str(ckpt), *FAST, "-q"]) == 0
    assert capsys.readouterr().err == (
        "bsmamba2: note: 2 audio files under the output folder sep left out "
        "(earlier outputs are never inputs; choose another -o to separate them)\n"
    )


def test_official_with_chunking_options_is_one_line(tmp_path, ckpt, capsys):
    song = _wav(tmp_path / "song.wav")
    for extra in (["--segment", "4"], ["--overlap", "0.5"]):
        code = main(["separate", str(song), "-o", str(tmp_path / "out"), "--official", *extra])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1
        assert "--official fixes 8 s segments without overlap: drop --segment and --overlap" in err


def test_overlap_that_leaves_no_hop_is_one_line(tmp_path, ckpt, capsys):
    song = _wav(tmp_path / "song.wav")
    code = main(["separate", str(song), "-o", str(tmp_path / "out"), "--checkpoint", str(ckpt), "--overlap", "0.999"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("bsmamba2: error: --overlap: overlap 0.999 leaves 353 samples between 8 s segments")
    assert "use an overlap of at most 0.994" in err

