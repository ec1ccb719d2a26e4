"""The ops: each is one function that hands its call to the implementation chosen by
:mod:`bsmamba2.ops.backend`, the module of the same name in ``reference/`` or ``triton/``."""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from types import ModuleType

import torch

from bsmamba2.ops import reference
from bsmamba2.ops.backend import KernelBackendError, active_backend, requested_backend
from bsmamba2.ops.cpu import selective as cpu_selective


@functools.cache
def has_kernel(module: str) -> bool:
    """Whether ``ops/triton/<module>.py`` exists (an op may have only its reference so far)."""
    return (Path(__file__).parent / "triton" / f"{module}.py").is_file()


def implementation(module: str, t: torch.Tensor) -> ModuleType:
    """``bsmamba2.ops.triton.<module>`` when the backend rule gives Triton for tensors like
    ``t`` and that kernel exists, else ``bsmamba2.ops.reference.<module>``."""
    if active_backend(t.device, t.dtype) == "triton":
        if has_kernel(module):
            return importlib.import_module(f"bsmamba2.ops.triton.{module}")
        if requested_backend() == "triton":
            raise KernelBackendError(f"there is no Triton kernel for ops/reference/{module}.py yet; "
                                     "use BSMAMBA2_KERNELS=auto or torch")
    return getattr(reference, module)  # imported with the package: no import on the hot path


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    *,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    reverse: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 selective scan; see :func:`bsmamba2.ops.reference.ssd.ssd_scan` for the contract.

    ``reverse``: the scan of the sequences read from their last step to their first, returned
    in their own order (= flip(scan(flip(...))) along the steps; the initial state enters at the
    last step, the final state leaves at the first). The kernels walk the sequences backwards;
    the reference is run on flipped copies.

    ``out``: y of an earlier call on these same inputs, for a recompute
    (:mod:`bsmamba2.model.recompute`): the kernel returns it with this call's backward
    instead of computing it again; the reference, whose backward is its forward's graph,
    computes it again.
    """
    impl = implementation("ssd", x)
    if impl is not reference.ssd:
        return impl.ssd_scan(x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                             initial_state=initial_state, return_final_state=return_final_state,
                             reverse=reverse, out=out)
    if not reverse:
        return impl.ssd_scan(x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                             initial_state=initial_state, return_final_state=return_final_state)
    flipped = impl.ssd_scan(x.flip(1), dt.flip(1), A, B.flip(1), C.flip(1), D, dt_bias=dt_bias,
                            dt_softplus=dt_softplus, initial_state=initial_state,
                            return_final_state=return_final_state)
    return (flipped[0].flip(1), flipped[1]) if return_final_state else flipped.flip(1)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None, *, reverse: bool = False) -> torch.Tensor:
    """Causal depthwise conv1d on (b, l, d); see :func:`bsmamba2.ops.reference.conv.causal_conv1d`.

    ``reverse``: the conv of the reversed sequences, in their own order (anti-causal:
    flip(conv(flip(x))) along the steps); the kernel reads backwards, the reference flips.
    """
    impl = implementation("conv", x)
    if not 2 <= weight.shape[-1] <= 4 and requested_backend() == "auto":
        # the kernel covers widths 2–4 (Mamba-2 uses 4); auto serves others by reference
        impl = reference.conv
    if not reverse:
        return impl.causal_conv1d(x, weight, bias, activation)
    if impl is not reference.conv:
        return impl.causal_conv1d(x, weight, bias, activation, reverse=True)
    return impl.causal_conv1d(x.flip(1), weight, bias, activation).flip(1)


def reverses_in_kernels(t: torch.Tensor, scan: str = "ssd") -> bool:
    """Whether the scan (``"ssd"``, Mamba-2's, or ``"selective"``, Mamba-1's, with the conv;
    ``"mamba3"``, whose mixer has none, without a backward ahead) walks sequences like ``t``
    backwards itself (``reverse=True`` without flipped copies): the Triton kernels do, the
    reference flips."""
    if scan == "mamba3":
        return implementation(scan, t) is not reference.mamba3
    return (implementation(scan, t) is not getattr(reference, scan)
            and implementation("conv", t) is not reference.conv)


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor,
                   eps: float = 1e-5, group_size: int | None = None) -> torch.Tensor:
    """RMSNorm(x · SiLU(z)) · weight; see :func:`bsmamba2.ops.reference.norm.gated_rms_norm`."""
    return implementation("norm", x).gated_rms_norm(x, z, weight, eps, group_size)


def mamba3_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    adt: torch.Tensor,
    dt: torch.Tensor,
    trap: torch.Tensor,
    q_bias: torch.Tensor,
    k_bias: torch.Tensor,
    angles: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    *,
    mimo_x: torch.Tensor | None = None,
    mimo_z: torch.Tensor | None = None,
    mimo_o: torch.Tensor | None = None,
    chunk_size: int | None = None,
    reverse: bool = False,
    halved_pairs: bool = False,
) -> torch.Tensor:
    """Mamba-3 scan, SISO or MIMO; see :func:`bsmamba2.ops.reference.mamba3.mamba3_scan`.
    ``chunk_size`` (steps; None: 64 rows, 64 / R steps) is a speed knob of both implementations.
    ``reverse``: the reversed sequences' scan in their own order (the kernels walk the steps
    backwards without a backward ahead, :func:`reverses_in_kernels`; else flipped copies).
    ``halved_pairs``: SISO's q, k and biases with their rotation pairs as (j, j + N/2).

    ``auto`` serves CUDA tensors by the Triton kernels in the dtypes and shapes they are tested
    in on a GPU (fp32 and bf16; power-of-two rank, d_state and headdim, as
    :func:`bsmamba2.ops.triton.mamba3.supports` says), the rest by the reference;
    ``BSMAMBA2_KERNELS=triton`` takes the kernels for every dtype and says in one line when
    they cannot take the shapes.
    """
    impl = implementation("mamba3", v)
    if impl is not reference.mamba3 and requested_backend() == "auto" and not (
            v.dtype in (torch.float32, torch.bfloat16) and impl.supports(q, v, mimo_x)):
        impl = reference.mamba3
    return impl.mamba3_scan(q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z, mimo_x=mimo_x,
                            mimo_z=mimo_z, mimo_o=mimo_o, chunk_size=chunk_size, reverse=reverse,
                            halved_pairs=halved_pairs)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    reverse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan with mamba_ssm's ``selective_scan_fn`` arguments; see
    :func:`bsmamba2.ops.reference.selective.selective_scan` for the contract.

    ``reverse``: the scan of the sequences read from their last step to their first, returned
    in their own order (= flip(scan(flip(...))) along the steps of u, delta, z, B and C; the
    initial state enters at the last step, the final state leaves at the first). The Triton
    kernels walk the sequences backwards; the reference and the C kernel run on flipped copies.

    Where the reference would serve a call that needs no gradient on the CPU, our C kernel
    (:mod:`bsmamba2.ops.cpu.selective`, ``BSMAMBA2_CPU_SCAN``) takes it when it can."""
    impl = implementation("selective", u)
    final = return_last_state or return_final_state
    if impl is not reference.selective:
        return impl.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, final,
                                   initial_state=initial_state, reverse=reverse)
    if reverse:
        flip = [t.flip(-1) if t is not None else None for t in (u, delta, B, C, z)]
        out = selective_scan(flip[0], flip[1], A, flip[2], flip[3], D, flip[4], delta_bias, delta_softplus,
                             final, initial_state=initial_state)
        return (out[0].flip(-1), out[1]) if final else out.flip(-1)
    if cpu_selective.serves(u, delta, A, B, C, D, z, delta_bias, initial_state):
        impl = cpu_selective
    return impl.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, final,
                               initial_state=initial_state)
