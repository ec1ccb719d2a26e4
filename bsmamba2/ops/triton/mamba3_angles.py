"""The Mamba-3 scan's cumulative rotation angles φ_t = Σ_{u≤t} π·tanh(θ_u)·Δ_u in one pass,
and their gradient in one more.

PyTorch makes φ from the (b, l, h, s) angles in four passes (tanh, two products, the cumulative
sum) and its autograd takes as many again for the gradient, each over a tensor as large as
the angles: these kernels read the angles and Δ once and write φ once (forward), and read
dφ, the angles and Δ once and write dθ and dΔ once (backward). One program per (sequence,
head) walks the steps in blocks of BLOCK_L, carrying the sum so far (forward) or the sum
of the later steps' dφ (backward: dθ_t = π Δ_t (1 − tanh² θ_t) Σ_{u≥t} dφ_u, and
dΔ_t = Σ_j π tanh(θ_tj) Σ_{u≥t} dφ_uj). fp32 throughout.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from bsmamba2.ops.triton.common import sigmoid

BLOCK_L = 64
"""Steps per block of the walk."""
WARPS = 4
PI = tl.constexpr(math.pi)


@triton.jit
def _tanh(u):
    return 2.0 * sigmoid(2.0 * u) - 1.0


@triton.jit
def _block(a_ptr, dt_ptr, bi, hi, t, L, H, S, BS: tl.constexpr):
    """Offsets and mask of the block's (steps, s) angles, π·tanh θ and Δ (0 past the end)."""
    j = tl.arange(0, BS)
    mt = t < L
    m = mt[:, None] & (j < S)[None, :]
    offs = ((bi * L + t[:, None]) * H + hi) * S + j[None, :]
    th = PI * _tanh(tl.load(a_ptr + offs, mask=m, other=0.0).to(tl.float32))
    d = tl.load(dt_ptr + (bi * H + hi) * L + t, mask=mt, other=0.0)
    return offs, m, mt, th, d


@triton.jit
def _angles_fwd(a_ptr, dt_ptr, phi_ptr, L, H, S, BL: tl.constexpr, BS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // H
    hi = pid % H
    carry = tl.zeros((BS,), dtype=tl.float32)
    for l0 in range(0, L, BL):
        offs, m, _, th, d = _block(a_ptr, dt_ptr, bi, hi, l0 + tl.arange(0, BL), L, H, S, BS)
        inc = th * d[:, None]
        tl.store(phi_ptr + offs, tl.cumsum(inc, 0) + carry[None, :], mask=m)
        carry += tl.sum(inc, 0)


@triton.jit
def _angles_bwd(a_ptr, dt_ptr, dphi_ptr, da_ptr, ddt_ptr, L, H, S, BL: tl.constexpr, BS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // H
    hi = pid % H
    carry = tl.zeros((BS,), dtype=tl.float32)
    for i in range(tl.cdiv(L, BL)):
        t = (tl.cdiv(L, BL) - 1 - i) * BL + tl.arange(0, BL)
        offs, m, mt, th, d = _block(a_ptr, dt_ptr, bi, hi, t, L, H, S, BS)
        g = tl.load(dphi_ptr + offs, mask=m, other=0.0)
        total = tl.sum(g, 0)
        tail = total[None, :] - tl.cumsum(g, 0) + g + carry[None, :]  # Σ_{u≥t} dφ_u
        carry += total
        da = tail * d[:, None] * (PI - th * th / PI)  # π(1 − tanh²θ)
        tl.store(da_ptr + offs, da.to(da_ptr.dtype.element_ty), mask=m)
        tl.store(ddt_ptr + (bi * H + hi) * L + t, tl.sum(tail * th, 1), mask=mt)


class AngleCumsum(torch.autograd.Function):
    """φ (b, l, h, s) fp32 from the angles θ (b, l, h, s) and Δ (b, h, l) fp32."""

    @staticmethod
    def forward(ctx, angles: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        b, length, h, s = angles.shape
        phi = torch.empty(angles.shape, dtype=torch.float32, device=angles.device)
        meta = dict(BL=BLOCK_L, BS=triton.next_power_of_2(s), num_warps=WARPS)
        _angles_fwd[(b * h,)](angles, dt, phi, length, h, s, **meta)
        ctx.save_for_backward(angles, dt)
        ctx.meta = meta
        return phi

    @staticmethod
    def backward(ctx, dphi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles, dt = ctx.saved_tensors
        b, length, h, s = angles.shape
        da = torch.empty_like(angles)
        ddt = torch.empty_like(dt)
        _angles_bwd[(b * h,)](angles, dt, dphi.contiguous(), da, ddt, length, h, s, **ctx.meta)
        return da, ddt


def angle_cumsum(angles: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """φ_t = Σ_{u≤t} π·tanh(θ_u)·Δ_u (fp32, differentiable): angles (b, l, h, s), dt (b, h, l);
    :func:`bsmamba2.ops.reference.mamba3.angle_cumsum`'s contract, on CUDA tensors (or CPU ones
    under TRITON_INTERPRET=1)."""
    return AngleCumsum.apply(angles.contiguous(), dt.to(torch.float32).contiguous())
