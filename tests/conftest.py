"""Shared fixtures: the golden files of the official implementation (see tests/data/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def expected() -> dict[str, np.ndarray]:
    with np.load(DATA / "expected.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Fresh but reproducible random inputs in every test."""
    torch.manual_seed(1234)
    np.random.seed(1234)
    yield
