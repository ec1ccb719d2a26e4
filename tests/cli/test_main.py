"""The bsmamba2 command: --version, info, errors as one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

import bsmamba2
from bsmamba2.cli.main import main
from bsmamba2.ops.cpu import build


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"bsmamba2 {bsmamba2.__version__}"


def test_info_lists_versions_and_backend(capsys, monkeypatch):
    monkeypatch.setenv("BSMAMBA2_KERNELS", "torch")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for label in ("bsmamba2", "torch", "triton", "BSMAMBA2_KERNELS", "kernels on cpu"):
        assert label in out
    assert re.search(r"kernels on cpu +torch\n", out)
    assert re.search(r"mixers +mamba2, .*\bmamba\b.*default mamba2", out)
    assert re.search(r"torch.compile \(CPU\) +(C\+\+ compiler \S+: `separate --compile auto` can use it|no C\+\+)", out)
    assert re.search(r"compile cache +\S", out)
    if build.compiler() is not None:
        assert re.search(r"Mamba-1 scan, CPU inference +our C kernel \(BSMAMBA2_CPU_SCAN=auto", out)
    for forced, precision in (("1", "bf16 (bf16 instructions"), ("0", "fp32 (no AVX-512 BF16 or AMX")):
        monkeypatch.setenv("BSMAMBA2_CPU_BF16", forced)
        assert main(["info"]) == 0
        assert re.search(rf"--precision auto \(CPU\) +{re.escape(precision)}", capsys.readouterr().out)
    monkeypatch.setenv("CXX", "no-such-compiler-bsmamba2")
    monkeypatch.setenv("CC", "no-such-compiler-bsmamba2")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "no C++ compiler ($CXX or g++): separation stays eager" in out
    assert re.search(r"Mamba-1 scan, CPU inference +PyTorch: no C compiler", out)
    monkeypatch.setenv("BSMAMBA2_CPU_SCAN", "torch")
    assert main(["info"]) == 0
    assert re.search(r"Mamba-1 scan, CPU inference +PyTorch \(BSMAMBA2_CPU_SCAN=torch\)", capsys.readouterr().out)


def test_info_json_is_one_object_with_the_same_rows(capsys):
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bsmamba2"] == bsmamba2.__version__ and report["kernels on cpu"] in ("torch", "triton")
    assert report["--device auto"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_console_script_and_bad_backend_is_one_line():
    env_run = subprocess.run(
        [sys.executable, "-m", "bsmamba2.cli.main", "info"],
        capture_output=True, text=True, env={"BSMAMBA2_KERNELS": "bogus", "PATH": ""},
    )
    assert env_run.returncode == 1
    assert env_run.stderr.count("\n") == 1 and "BSMAMBA2_KERNELS='bogus'" in env_run.stderr
    assert "Traceback" not in env_run.stderr


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: bsmamba2" in capsys.readouterr().out


def test_library_parameters_become_flags(tmp_path, capsys):
    """The library says ``ema=True``; the command line, where the user typed --ema, says so."""
    from argparse import Namespace

    from bsmamba2 import BSMamba2, save_model
    from bsmamba2.checkpoint import CheckpointError, load_model
    from bsmamba2.cli.main import as_flags
    from tests.helpers.configs import MICRO

    args = Namespace(ema=True, overlap=0.999, batch_size=4)
    assert as_flags("overlap=0.999 makes the hop 1 sample", args) == "--overlap 0.999 makes the hop 1 sample"
    assert as_flags("ema=True, but batch_size=4; key=1", args) == "--ema, but --batch-size 4; key=1"
    assert as_flags("/music/overlap=loud/a.wav", args) == "/music/overlap=loud/a.wav"  # paths stay
    save_model(BSMamba2(MICRO), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"m.safetensors: ema=True, but safetensors files hold one set"):
        load_model(tmp_path / "m.safetensors", ema=True)
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "song.wav", np.zeros((4410, 2), np.float32), 44100)  # inputs are checked first
    code = main(["separate", str(tmp_path / "song.wav"), "--checkpoint", str(tmp_path / "m.safetensors"), "--ema"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.endswith("m.safetensors: --ema, but safetensors files hold one set of weights"), err
