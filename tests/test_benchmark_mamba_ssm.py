"""Smoke test of benchmark_mamba_ssm.py on the CPU (fallback backend, tiny shapes)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmark_mamba_ssm.py"


def test_benchmark_runs_and_writes_json(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("benchmark_mamba_ssm", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
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
