"""The README's Python blocks run as pasted, in a folder holding the files they name (a
micro model's weights under the checkpoint name the README uses, a short song), so they
cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bsmamba2 import BSMamba2, save_model
from tests.helpers.configs import MICRO

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """The files the blocks name: weights (the micro model; loading reads safetensors by
    content, whatever the suffix) and 0.5 s songs."""
    torch.manual_seed(0)
    save_model(BSMamba2(MICRO), tmp_path / "bs_mamba2_vocals.ckpt")
    song = (np.random.default_rng(0).standard_normal((22050, 2)) * 0.1).astype(np.float32)
    for name in ("song.wav", "song.flac"):
        sf.write(tmp_path / name, song, 44100)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(workspace, index, capsys):
    """Runs, and each ``print(...)  # value`` prints that value."""
    code = compile(BLOCKS[index], f"README.md, python block {index + 1}", "exec")
    exec(code, {"__name__": "__readme__"})
    promised = re.findall(r"^print\(.*\)\s+#\s*(\S+)", BLOCKS[index], flags=re.M)
    assert capsys.readouterr().out.split() == promised
