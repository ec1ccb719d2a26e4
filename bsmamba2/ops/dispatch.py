"""Choose the implementation of each Mamba-2 op.

``BSMAMBA2_KERNELS`` selects it: ``torch`` (the PyTorch reference), ``triton`` (our
Triton kernels, :mod:`bsmamba2.ops.triton`; never falls back silently) or ``auto`` (the
default: the Triton kernels for CUDA tensors of a dtype they take when triton imports,
the reference otherwise). ``triton`` needs CUDA tensors, or ``TRITON_INTERPRET=1`` (set
before the kernels are first used) to run the kernels on CPU tensors through Triton's
interpreter. The variable is read at every call, so tests and tools can switch it at
run time.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch

from bsmamba2.errors import BSMamba2Error
from bsmamba2.ops import reference

BACKENDS = ("auto", "triton", "torch")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class KernelBackendError(BSMamba2Error, RuntimeError):
    """The requested kernel backend cannot serve these tensors."""


def requested_backend() -> str:
    """The value of BSMAMBA2_KERNELS (default ``auto``), validated."""
    value = os.environ.get("BSMAMBA2_KERNELS", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise KernelBackendError(f"BSMAMBA2_KERNELS={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


@functools.cache
def _triton_import_error() -> str | None:
    """Why triton cannot be imported, or None when it can."""
    try:
        importlib.import_module("triton")
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_kernels_available() -> bool:
    """Whether our Triton kernels can run here (triton imports)."""
    return _triton_import_error() is None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def active_backend(device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> str:
    """The implementation the ops use for tensors on ``device``: ``torch`` or ``triton``.

    Raises :class:`KernelBackendError` when ``BSMAMBA2_KERNELS=triton`` cannot be honoured.
    """
    requested = requested_backend()
    dev = torch.device(device if device is not None else "cpu")
    if requested == "torch":
        return "torch"
    if requested == "auto":
        usable = dev.type == "cuda" and triton_kernels_available()
        return "triton" if usable and (dtype is None or dtype in KERNEL_DTYPES) else "torch"
    if not triton_kernels_available():
        raise KernelBackendError(f"BSMAMBA2_KERNELS=triton, but triton cannot be imported "
                                 f"({_triton_import_error()}); use BSMAMBA2_KERNELS=auto or torch")
    if dev.type != "cuda" and not _interpreting():
        raise KernelBackendError(f"BSMAMBA2_KERNELS=triton needs CUDA tensors, got {dev.type} ones; "
                                 "set TRITON_INTERPRET=1 to run the kernels on the CPU in Triton's "
                                 "interpreter (slow), or use BSMAMBA2_KERNELS=auto")
    if dtype is not None and dtype not in KERNEL_DTYPES:
        raise KernelBackendError(f"BSMAMBA2_KERNELS=triton: the kernels take float32, float16 or "
                                 f"bfloat16 tensors, not {dtype}")
    return "triton"


def _kernels(t: torch.Tensor) -> ModuleType | None:
    """The Triton kernel module when it serves ``t``, else None (the reference does)."""
    if active_backend(t.device, t.dtype) == "triton":
        return importlib.import_module("bsmamba2.ops.triton")
    return None


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, D: torch.Tensor | None = None, **kwargs):
    """Mamba-2 selective scan; see :func:`bsmamba2.ops.reference.ssd_scan` for the contract."""
    impl = _kernels(x) or reference
    return impl.ssd_scan(x, dt, A, B, C, D, **kwargs)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None) -> torch.Tensor:
    """Causal depthwise conv1d on (b, l, d); see :func:`bsmamba2.ops.reference.causal_conv1d`."""
    impl = _kernels(x)
    if impl is not None and not 2 <= weight.shape[-1] <= 4 and requested_backend() == "auto":
        impl = None  # the kernel covers widths 2–4 (Mamba-2 uses 4); auto serves others by reference
    return (impl or reference).causal_conv1d(x, weight, bias, activation)


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor,
                   eps: float = 1e-5, group_size: int | None = None) -> torch.Tensor:
    """RMSNorm(x · SiLU(z)) · weight; see :func:`bsmamba2.ops.reference.gated_rms_norm`."""
    impl = _kernels(x) or reference
    return impl.gated_rms_norm(x, z, weight, eps, group_size)
