"""Choose the implementation of each Mamba-2 op.

``BSMAMBA2_KERNELS`` selects it: ``torch`` (the PyTorch reference), ``triton`` (our
Triton kernels; never falls back silently) or ``auto`` (the default: Triton kernels
for CUDA tensors when they are available, the reference otherwise). The variable is
read at every call, so tests and tools can switch it at run time.
"""

from __future__ import annotations

import os

import torch

from bsmamba2.ops import reference

BACKENDS = ("auto", "triton", "torch")


def requested_backend() -> str:
    """The value of BSMAMBA2_KERNELS (default ``auto``), validated."""
    value = os.environ.get("BSMAMBA2_KERNELS", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"BSMAMBA2_KERNELS={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


def triton_kernels_available() -> bool:
    """Whether this build ships Triton kernels (not yet: the reference serves every device)."""
    return False


def active_backend(device: torch.device | str | None = None) -> str:
    """The implementation the ops use for tensors on ``device``: ``torch`` or ``triton``."""
    requested = requested_backend()
    if requested == "triton":
        if not triton_kernels_available():
            raise RuntimeError(
                "BSMAMBA2_KERNELS=triton, but this build has no Triton kernels yet; "
                "unset it or use BSMAMBA2_KERNELS=torch"
            )
        return "triton"
    return "torch"


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, D: torch.Tensor | None = None, **kwargs):
    """Mamba-2 selective scan; see :func:`bsmamba2.ops.reference.ssd_scan` for the contract."""
    active_backend(x.device)
    return reference.ssd_scan(x, dt, A, B, C, D, **kwargs)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None) -> torch.Tensor:
    """Causal depthwise conv1d on (b, l, d); see :func:`bsmamba2.ops.reference.causal_conv1d`."""
    active_backend(x.device)
    return reference.causal_conv1d(x, weight, bias, activation)


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor,
                   eps: float = 1e-5, group_size: int | None = None) -> torch.Tensor:
    """RMSNorm(x · SiLU(z)) · weight; see :func:`bsmamba2.ops.reference.gated_rms_norm`."""
    active_backend(x.device)
    return reference.gated_rms_norm(x, z, weight, eps, group_size)
