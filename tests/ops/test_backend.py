"""The backend rule without triton: BSMAMBA2_KERNELS and ops.use_backend (the rule with the
kernels is tested in test_dispatch.py)."""

from __future__ import annotations

import pytest

from bsmamba2 import ops


def test_dispatch_rejects_unknown_backend(monkeypatch):
    monkeypatch.setenv("BSMAMBA2_KERNELS", "cuda-magic")
    with pytest.raises(ops.KernelBackendError, match="BSMAMBA2_KERNELS"):
        ops.requested_backend()


def test_use_backend_wins_over_the_environment_and_restores(monkeypatch):
    monkeypatch.setenv("BSMAMBA2_KERNELS", "triton")
    with ops.use_backend("torch"):
        assert ops.requested_backend() == "torch"
        with ops.use_backend("auto"):
            assert ops.requested_backend() == "auto"
        assert ops.requested_backend() == "torch"
    assert ops.requested_backend() == "triton"  # the environment again
    outer = ops.use_backend("torch")  # a plain call: the choice stays ...
    try:
        assert ops.requested_backend() == "torch"
    finally:
        outer.__exit__(None, None, None)  # ... until undone
    assert ops.requested_backend() == "triton"
