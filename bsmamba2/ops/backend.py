"""Which implementation the ops run: the PyTorch reference or our Triton kernels.

One rule, set by ``BSMAMBA2_KERNELS`` or, from Python, by :func:`use_backend` (which wins):
``torch`` (the PyTorch reference), ``triton`` (our Triton kernels, :mod:`bsmamba2.ops.triton`;
never falls back silently) or ``auto`` (the default: the Triton kernels for CUDA tensors of a
dtype they take when triton imports, the reference otherwise). ``triton`` needs CUDA tensors,
or ``TRITON_INTERPRET=1`` (set before the kernels are first imported) to run the kernels on
CPU tensors through Triton's interpreter. The rule is applied at every call, so tests and
tools can switch it at run time.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import TracebackType

import torch

from bsmamba2.errors import BSMamba2Error

BACKENDS = ("auto", "triton", "torch")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_chosen: str | None = None  # set by use_backend; None: BSMAMBA2_KERNELS decides


class KernelBackendError(BSMamba2Error, RuntimeError):
    """The requested kernel backend cannot serve these tensors."""


def triton_interpreter() -> bool:
    """Whether TRITON_INTERPRET=1 asks for Triton's CPU interpreter (the one place it is read)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _validated(value: str, source: str) -> str:
    value = value.strip().lower() or "auto"
    if value not in BACKENDS:
        raise KernelBackendError(f"{source}={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


def requested_backend() -> str:
    """The backend asked for: :func:`use_backend`'s choice, else BSMAMBA2_KERNELS (default
    ``auto``), validated."""
    if _chosen is not None:
        return _chosen
    return _validated(os.environ.get("BSMAMBA2_KERNELS", "auto"), "BSMAMBA2_KERNELS")


class use_backend:
    """Choose the ops' backend (``"torch"``, ``"triton"`` or ``"auto"``) from Python, over
    BSMAMBA2_KERNELS, for the whole process.

    As a context manager the previous choice comes back on exit; as a plain call the choice
    stays. Not thread-local: like the environment variable, it is one setting for all.
    """

    def __init__(self, backend: str) -> None:
        global _chosen
        value = _validated(backend, "use_backend")
        self._previous = _chosen
        _chosen = value

    def __enter__(self) -> use_backend:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        global _chosen
        _chosen = self._previous


def _source(backend: str) -> str:
    """How the user asked for ``backend``, for error messages."""
    return f"use_backend({backend!r})" if _chosen is not None else f"BSMAMBA2_KERNELS={backend}"


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


def active_backend(device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> str:
    """The implementation the ops use for tensors on ``device``: ``torch`` or ``triton``.

    Raises :class:`KernelBackendError` when a requested ``triton`` cannot be honoured.
    """
    requested = requested_backend()
    dev = torch.device(device if device is not None else "cpu")
    if requested == "torch":
        return "torch"
    if requested == "auto":
        usable = dev.type == "cuda" and triton_kernels_available()
        return "triton" if usable and (dtype is None or dtype in KERNEL_DTYPES) else "torch"
    asked = _source(requested)
    if not triton_kernels_available():
        raise KernelBackendError(f"{asked}, but triton cannot be imported "
                                 f"({_triton_import_error()}); use BSMAMBA2_KERNELS=auto or torch")
    if dev.type != "cuda" and not triton_interpreter():
        raise KernelBackendError(f"{asked} needs CUDA tensors, got {dev.type} ones; "
                                 "set TRITON_INTERPRET=1 to run the kernels on the CPU in Triton's "
                                 "interpreter (slow), or use BSMAMBA2_KERNELS=auto")
    if dtype is not None and dtype not in KERNEL_DTYPES:
        raise KernelBackendError(f"{asked}: the kernels take float32, float16 or "
                                 f"bfloat16 tensors, not {dtype}")
    return "triton"
