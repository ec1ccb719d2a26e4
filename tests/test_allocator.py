"""The glibc allocator tuning used by the command line: effective here, harmless, same results."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import torch
from bsmamba2.allocator import tune_allocator
from bsmamba2.model import BSMamba2, BSMamba2Config
torch.manual_seed(0)
model = BSMamba2(BSMamba2Config(dim=16, depth=1, expand=2, headdim=16, d_state=8)).eval()
spec = torch.randn(1, 2, 1025, 20, dtype=torch.complex64)
with torch.no_grad():
    before = model(spec)
    print(tune_allocator(), tune_allocator())
    for _ in range(2):
        assert torch.equal(model(spec), before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuning_applies_once_and_changes_no_result():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
