"""Shared setup of the Triton kernel tests (tests skip when triton is missing).

On a machine without CUDA the kernels run in Triton's interpreter: tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports the kernels (Triton reads it when a kernel is
defined); this module checks that it took.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from tests.helpers.numerics import rel_err

ON_GPU = torch.cuda.is_available()
pytest.importorskip("triton")
from bsmamba2.ops.triton import common  # noqa: E402 (only once triton is known to import)

if not ON_GPU and not common.INTERPRET:
    raise RuntimeError("bsmamba2.ops.triton was imported before TRITON_INTERPRET=1 was set")

DEVICE = "cuda" if ON_GPU else "cpu"
# fp32: 1e-4 where the dots are exact fp32 (the interpreter), 5e-3 where they are tf32 (a GPU).
TOL = {torch.float32: 5e-3 if ON_GPU else 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def assert_close(name: str, actual: torch.Tensor, truth: torch.Tensor, dtype: torch.dtype,
                 slack: float = 0.0) -> None:
    """Relative error within the dtype's tolerance (or ``slack``, if larger)."""
    assert actual.shape == truth.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(truth.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values (unwritten output?)"
    err = rel_err(actual, truth)
    tol = max(TOL[dtype], slack)
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.1e}"


@contextmanager
def poisoned_outputs():
    """Every torch.empty* inside is filled with NaN, so an output element a kernel fails to
    write shows up as NaN instead of stale memory."""
    old_mode = torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_mode)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill


def grads(out: torch.Tensor, leaves: list[torch.Tensor], weight: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of Σ out·weight (in float64) with respect to ``leaves``."""
    return list(torch.autograd.grad((out.double() * weight).sum(), leaves))
