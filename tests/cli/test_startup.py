"""Start-up: each command imports only what it needs (issue 13 item 6). Timings are measured
by tools/bench_startup.py (docs/benchmarks.md), not asserted here: what is checked is which
modules a fresh interpreter has loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "lightning", "matplotlib", "museval", "musdb", "tensorboard", "triton", "librosa")


def loaded_after(code: str) -> set[str]:
    """The HEAVY modules loaded by ``code`` in a fresh interpreter running this checkout."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stdout.strip().splitlines()[-1]))


def test_separation_does_not_import_training_or_plotting():
    assert not loaded_after("import bsmamba2.separation\nbsmamba2.separation.Separator") & {
        "lightning", "matplotlib", "museval", "musdb", "tensorboard", "librosa"
    }


@pytest.mark.parametrize(
    "argv",
    [["--version"], ["--help"], ["separate", "--help"], ["separate", "missing.wav"]],
)
def test_version_help_and_input_errors_do_not_load_torch(argv):
    code = (
        "import contextlib, io\nfrom bsmamba2.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass"
    )
    assert loaded_after(code) == set()


def test_package_face_loads_names_on_first_use():
    assert loaded_after("import bsmamba2\nbsmamba2.__version__") == set()
    assert "torch" in loaded_after("import bsmamba2\nbsmamba2.Separator")
    assert "torch" in loaded_after("from bsmamba2 import load_model")
