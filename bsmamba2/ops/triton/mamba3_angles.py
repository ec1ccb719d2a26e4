"""The gradient of the Mamba-3 scan's cumulative rotation angles φ_t = Σ_{u≤t} π·tanh(θ_u)·Δ_u,
in one pass.

φ itself is made inside the scan's forward kernel (:func:`bsmamba2.ops.triton.mamba3._fwd`,
which walks the steps of each (sequence, head) in order anyway) and stored only when a
backward will need it. Its gradient, which PyTorch's autograd would make in as many passes as
the forward's tanh, products and cumulative sum, is made here in one: one program per
(sequence, head) walks the steps backwards in blocks of BLOCK_L, carrying the sum of the later
steps' dφ: dθ_t = π Δ_t (1 − tanh² θ_t) Σ_{u≥t} dφ_u and dΔ_t = Σ_j π tanh(θ_tj) Σ_{u≥t} dφ_uj.
fp32 throughout.
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
def tanh(u):
    return 2.0 * sigmoid(2.0 * u) - 1.0


@triton.jit
def _angles_bwd(a_ptr, dt_ptr, dphi_ptr, da_ptr, ddt_ptr, L, H, S, BL: tl.constexpr, BS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // H
    hi = pid % H
    j = tl.arange(0, BS)
    carry = tl.zeros((BS,), dtype=tl.float32)
    for i in range(tl.cdiv(L, BL)):
        t = (tl.cdiv(L, BL) - 1 - i) * BL + tl.arange(0, BL)
        mt = t < L
        m = mt[:, None] & (j < S)[None, :]
        offs = ((bi * L + t[:, None]) * H + hi) * S + j[None, :]
        th = PI * tanh(tl.load(a_ptr + offs, mask=m, other=0.0).to(tl.float32))
        d = tl.load(dt_ptr + (bi * H + hi) * L + t, mask=mt, other=0.0)
        g = tl.load(dphi_ptr + offs, mask=m, other=0.0)
        total = tl.sum(g, 0)
        tail = total[None, :] - tl.cumsum(g, 0) + g + carry[None, :]  # Σ_{u≥t} dφ_u
        carry += total
        da = tail * d[:, None] * (PI - th * th / PI)  # π(1 − tanh²θ)
        tl.store(da_ptr + offs, da.to(da_ptr.dtype.element_ty), mask=m)
        tl.store(ddt_ptr + (bi * H + hi) * L + t, tl.sum(tail * th, 1), mask=mt)


def angle_grads(angles: torch.Tensor, dt: torch.Tensor,
                dphi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of the angles θ (b, l, h, s) and of Δ (b, h, l) fp32 from dφ (b, l, h, s),
    for φ_t = Σ_{u≤t} π·tanh(θ_u)·Δ_u (:func:`bsmamba2.ops.reference.mamba3.angle_cumsum`);
    dθ in θ's dtype, dΔ fp32. On CUDA tensors (or CPU ones under TRITON_INTERPRET=1)."""
    angles, dt, dphi = angles.contiguous(), dt.to(torch.float32).contiguous(), dphi.contiguous()
    b, length, h, s = angles.shape
    da = torch.empty_like(angles)
    ddt = torch.empty_like(dt)
    _angles_bwd[(b * h,)](angles, dt, dphi, da, ddt, length, h, s, BL=BLOCK_L, BS=triton.next_power_of_2(s),
                          num_warps=WARPS)
    return da, ddt
