"""Smoke test of benchmark_mamba_ssm.py on the CPU (fallback backend, tiny shapes)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmark_mamba_ssm.py"


@pytest.fixture
def bench(monkeypatch):
    """The script as a module (it is not a package module)."""
    spec = importlib.util.spec_from_file_location("benchmark_mamba_ssm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_and_writes_json(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--quick", "--shapes", "tiny", "--backends", "torch",
                       "--mixers", "mamba2,mamba", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {r["level"] for r in rows} == {"op", "block", "model"}
    assert all(r["ms"] and r["ms"] > 0 and r["backend"] == "torch" for r in rows), rows
    assert result["meta"]["torch"] and result["meta"]["dtype"] == "torch.float32"
    printed = capsys.readouterr().out
    assert "ssd_scan time" in printed and "selective_scan band" in printed
    model_rows = [r["name"] for r in rows if r["level"] == "model"]
    assert len(model_rows) == 4 and sum("[mamba]" in name for name in model_rows) == 2


def test_mamba3_chunk_option(bench, tmp_path, monkeypatch):
    """--mamba3-chunk reaches the op rows' scan calls and the mamba3 mixers' config."""
    seen, original = [], bench.ops.mamba3_scan
    monkeypatch.setattr(bench.ops, "mamba3_scan", lambda *a, **kw: seen.append(kw.get("chunk_size")) or original(*a, **kw))
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--quick", "--shapes", "tiny", "--backends", "torch", "--levels", "op",
                       "--ops", "mamba3_scan", "--mamba3-chunk", "8", "--json", str(out)]) == 0
    assert seen and set(seen) == {8}
    assert all(r["ms"] for r in json.loads(out.read_text())["rows"])
    args = bench.argparse.Namespace(mixers=["mamba3", "mamba2"], mamba3_chunk=8)
    (label, m3), (_, m2) = bench.mixer_configs(args, bench.SHAPES["tiny"]["cfg"])
    assert m3.mixer_options["chunk_size"] == 8 and "chunk 8" in label and m2.mixer == "mamba2"


def test_triton_backend_without_a_gpu_is_a_usage_error(bench, capsys, monkeypatch):
    """Asking for the Triton kernels on CPU tensors (no interpreter) exits 2 with one line."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # read at the check: the suite's interpreter is off here
    try:
        bench.main(["--device", "cpu", "--levels", "op", "--backends", "triton"])
    except SystemExit as stop:
        assert stop.code == 2
    else:
        raise AssertionError("no error")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: use_backend('triton') needs CUDA tensors" in err, err


def test_a_failing_first_call_keeps_its_message(bench, tmp_path, monkeypatch):
    """A model step that raises on its first call is a row whose note names the error and its
    first line (a kernel error and an out-of-memory must read differently), and the run goes on."""
    def fail(*args, **kwargs):
        raise RuntimeError("Triton Error [CUDA]: out of memory\nsecond line")

    monkeypatch.setattr(bench, "istft", fail)  # only the separation step calls it
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--quick", "--shapes", "tiny", "--backends", "torch",
                       "--levels", "model", "--json", str(out)]) == 0
    separate, training = json.loads(out.read_text())["rows"]
    assert separate["ms"] is None and separate["note"] == "failed: RuntimeError: Triton Error [CUDA]: out of memory"
    assert training["ms"] > 0 and not training["note"]
