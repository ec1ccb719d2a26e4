"""The Mamba-1 selective scan in C for CPU inference (``selective.c`` beside this file).

Why: on the CPU the PyTorch scan (:mod:`bsmamba2.ops.reference.selective`) is bound by its
passes over memory, one torch op per tile step; in C a work item (a vector register's worth of
neighbouring channels of one sequence) keeps its states in registers for the whole sequence,
with Δ's softplus and bias, D and the SiLU gate fused, so each state update is a few vector
instructions (docs/benchmarks.md). It has no backward: the dispatch hands it only calls that
need no gradient, on CPU tensors of float32 or bfloat16 (float32 state and arithmetic inside).

``BSMAMBA2_CPU_SCAN`` chooses: ``auto`` (the default: this kernel when it builds, else the
PyTorch scan, with one logged warning saying why), ``c`` (this kernel; a build failure is an
error) or ``torch`` (the PyTorch scan). The library is built on first use by
:mod:`bsmamba2.ops.cpu.build`. Under ``torch.compile`` the call goes through a ``torch.library``
custom op with a fake implementation, so the scan is traced as one node.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from bsmamba2.ops.backend import KernelBackendError
from bsmamba2.ops.cpu.build import BuildError, compiler, load_library

SOURCE = Path(__file__).with_name("selective.c")
MODES = ("auto", "c", "torch")
DTYPES = (torch.float32, torch.bfloat16)
MAX_STATES = 256
"""d_state the kernel takes (selective.c's MAX_STATES); more go to the PyTorch scan."""
_log = logging.getLogger(__name__)
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


class _Args(ctypes.Structure):
    """``scan_args`` of selective.c, field for field."""

    _fields_ = [*((name, _i64) for name in ("batch", "d", "length", "n", "groups")),
                *((name, _ptr) for name in ("u", "delta", "z")),
                *((name, _i64) for name in ("u_sb", "u_st", "delta_sb", "delta_st", "z_sb", "z_st")),
                *((name, _ptr) for name in ("B", "C", "A2", "D", "bias", "state", "out")),
                ("out_sb", _i64), ("out_st", _i64), ("bf16", ctypes.c_int32), ("softplus", ctypes.c_int32)]


def mode() -> str:
    """``BSMAMBA2_CPU_SCAN``, validated (default ``auto``)."""
    value = os.environ.get("BSMAMBA2_CPU_SCAN", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise KernelBackendError(f"BSMAMBA2_CPU_SCAN={value!r}: expected one of {', '.join(MODES)}")
    return value


@functools.cache
def _library() -> ctypes.CDLL:
    lib = load_library(SOURCE)
    lib.bsm_selective_scan.argtypes = [ctypes.POINTER(_Args), ctypes.c_int]
    if lib.bsm_args_size() != ctypes.sizeof(_Args):
        raise BuildError(f"{SOURCE.name}: the library's scan_args is not the one this module passes")
    return lib


@functools.cache
def _fallback_reason() -> str | None:
    """Why ``auto`` uses the PyTorch scan (logged once), or None when the kernel loads."""
    try:
        _library()
    except BuildError as exc:
        _log.warning("bsmamba2: %s; the CPU selective scan runs in PyTorch (BSMAMBA2_CPU_SCAN=torch "
                     "says so without this warning)", exc)
        return str(exc)
    return None


@torch.compiler.assume_constant_result  # decided once when traced, not per call of the graph
def enabled() -> bool:
    """Whether ``BSMAMBA2_CPU_SCAN`` lets this kernel serve and it is there: ``c`` builds it or
    raises; ``auto`` builds it or logs why not, once; ``torch``: False."""
    chosen = mode()
    if chosen == "c":
        _library()
        return True
    return chosen == "auto" and _fallback_reason() is None


def describe() -> str:
    """Which scan CPU inference of Mamba-1 gets, in words, without building anything."""
    chosen = mode()
    if chosen == "torch":
        return "PyTorch (BSMAMBA2_CPU_SCAN=torch)"
    cc = compiler()
    if cc is None:
        return (f"PyTorch: no C compiler ($CC, cc, gcc or clang) for our C kernel"
                f"{' (BSMAMBA2_CPU_SCAN=c: an error)' if chosen == 'c' else ''}")
    return f"our C kernel (BSMAMBA2_CPU_SCAN={chosen}; built on first use with {cc})"


def serves(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether this kernel takes a scan of these tensors (the op's, in its order): CPU, float32
    or bfloat16 u, at most MAX_STATES states, no gradient needed, and :func:`enabled`."""
    tensors = (u, delta, A, *others)
    if u.device.type != "cpu" or u.dtype not in DTYPES or A.shape[-1] > MAX_STATES or (
            torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        return False
    return enabled()


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    """The shapes the contract asks for, as one-line errors (the kernel reads by them)."""
    b, d, length = u.shape
    n = A.shape[1]
    groups = B.shape[1] if B.dim() == 4 else 1
    wanted = {"delta": (delta, (b, d, length)), "z": (z, (b, d, length)), "A": (A, (d, n)),
              "C": (C, tuple(B.shape)), "D": (D, (d,)), "delta_bias": (delta_bias, (d,)),
              "initial_state": (initial_state, (b, d, n))}
    for name, (t, shape) in wanted.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"selective_scan: {name} must be {shape} for u of {tuple(u.shape)} and "
                             f"{n} states, got {tuple(t.shape)}")
    if B.dim() not in (3, 4) or (B.shape[0], *B.shape[-2:]) != (b, n, length):
        raise ValueError(f"selective_scan: B and C must be ({b}, {n}, {length}) or "
                         f"({b}, groups, {n}, {length}), got {tuple(B.shape)}")
    if d % groups:
        raise ValueError(f"selective_scan: d ({d}) must be a multiple of the groups of B/C ({groups})")


def _channels_contiguous(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, d, length) in ``dtype`` with unit channel stride (the model's views already are)."""
    t = t.to(dtype)
    return t if t.stride(1) == 1 else t.transpose(1, 2).contiguous().transpose(1, 2)


def _steps(t: torch.Tensor) -> torch.Tensor:
    """B or C as float32 (batch, groups, length, n), contiguous: what the kernel reads per step."""
    return (t.unsqueeze(1) if t.dim() == 3 else t).to(torch.float32).transpose(-1, -2).contiguous()


def _to_blocks(t: torch.Tensor, groups: int, lanes: int) -> torch.Tensor:
    """(..., d, k) → float32 (..., blocks, k, lanes), contiguous: each group's channels in
    blocks of ``lanes``, the last block of a group padded with zeros."""
    *lead, d, k = t.shape
    dg = d // groups
    per = -(-dg // lanes)
    t = F.pad(t.to(torch.float32).reshape(*lead, groups, dg, k), (0, 0, 0, per * lanes - dg))
    return t.reshape(*lead, groups * per, lanes, k).transpose(-1, -2).contiguous()


def _from_blocks(t: torch.Tensor, groups: int, d: int) -> torch.Tensor:
    """The inverse of :func:`_to_blocks`: (..., blocks, k, lanes) → (..., d, k)."""
    *lead, blocks, k, lanes = t.shape
    per = blocks // groups
    t = t.transpose(-1, -2).reshape(*lead, groups, per * lanes, k)
    return t[..., : d // groups, :].reshape(*lead, d, k)


def _pointer(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def _scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
          D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
          delta_softplus: bool, initial_state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (batch, d, length) in u's dtype, a channel-last view; final state (batch, d, n) float32)."""
    lib = _library()
    lanes = lib.bsm_lanes()
    b, d, length = u.shape
    n = A.shape[1]
    Bs, Cs = _steps(B), _steps(C)
    g = Bs.shape[1]
    inputs = [t for t in (u, delta, z) if t is not None]
    dtype = torch.bfloat16 if all(t.dtype == torch.bfloat16 for t in inputs) else torch.float32
    us, dls = _channels_contiguous(u, dtype), _channels_contiguous(delta, dtype)
    zs = _channels_contiguous(z, dtype) if z is not None else None
    A2 = _to_blocks(A * (1 / math.log(2)), g, lanes)
    Ds, bias = (_to_blocks(t[:, None], g, lanes) if t is not None else None for t in (D, delta_bias))
    state = _to_blocks(initial_state if initial_state is not None else u.new_zeros(b, d, n), g, lanes)
    out = u.new_empty(b, length, d, dtype=dtype)
    args = _Args(b, d, length, n, g, us.data_ptr(), dls.data_ptr(), _pointer(zs),
                 us.stride(0), us.stride(2), dls.stride(0), dls.stride(2),
                 *((zs.stride(0), zs.stride(2)) if zs is not None else (0, 0)),
                 Bs.data_ptr(), Cs.data_ptr(), A2.data_ptr(), _pointer(Ds), _pointer(bias), state.data_ptr(),
                 out.data_ptr(), out.stride(0), out.stride(1), dtype == torch.bfloat16, delta_softplus)
    if lib.bsm_selective_scan(ctypes.byref(args), torch.get_num_threads()):
        raise ValueError(f"selective_scan: d_state {n} is more than the C kernel's {MAX_STATES}")
    return out.to(u.dtype).transpose(1, 2), _from_blocks(state, g, d).contiguous()


_scan_op = torch.library.custom_op("bsmamba2::selective_scan_cpu", _scan, mutates_args=(), device_types="cpu")


@_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    b, d, length = u.shape
    return u.new_empty(b, length, d).transpose(1, 2), u.new_empty(b, d, A.shape[1], dtype=torch.float32)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, initial_state=None, return_final_state=False):
    """The reference's contract (:func:`bsmamba2.ops.reference.selective.selective_scan`), for
    the calls :func:`serves` accepts."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    # Eager calls skip the op's wrapper, whose first call imports torch._dynamo (seconds).
    scan = _scan_op if torch.compiler.is_compiling() else _scan
    out, final = scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    return (out, final) if return_last_state or return_final_state else out
