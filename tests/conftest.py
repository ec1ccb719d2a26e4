"""Shared fixtures (golden files of the official implementation, see tests/data/README.md, and a
loopback HTTP server), and the Triton interpreter switch for CPU-only machines.

The tests mirror the package layout (tests/ops/ tests bsmamba2/ops/, ...; bsmamba2/data/ is
tested in tests/datasets/, as tests/data/ holds the fixture files). What several test modules
share lives in tests/helpers/; no test module imports another."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.http import Server, serving

# Without CUDA the Triton kernel tests run in Triton's interpreter. Triton decides that when
# a kernel (or triton.language's own jit helpers) is defined, i.e. at import, and Lightning
# imports triton.language: so the switch must be set before any test module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# `--precision auto` is bf16 on CPUs with bf16 instructions: the suite runs in fp32 on any CPU
# (its subprocesses too) unless a test says otherwise, so results do not depend on the machine.
os.environ.setdefault("BSMAMBA2_CPU_BF16", "0")

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def expected() -> dict[str, np.ndarray]:
    with np.load(DATA / "expected.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="session", autouse=True)
def _compile_cache(tmp_path_factory) -> None:
    """torch.compile's cache and bsmamba2's markers in it (bsmamba2.separation.compiling) go to
    a folder of the session, not to the user's cache."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))


@pytest.fixture
def server() -> Iterator[Server]:
    """A loopback HTTP server of ``tests.helpers.http.PAYLOAD``."""
    with serving() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Fresh but reproducible random inputs in every test."""
    torch.manual_seed(1234)
    np.random.seed(1234)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread of the busy 2-core CI machine; a module opts in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
