"""Gated RMSNorm, RMSNorm(x · SiLU(z)) · weight over groups of the last axis, in Triton.

Forward: one program normalises a few rows of one group (statistics in fp32) and saves
1/rms. Backward: one program per ``ROWS_PER_PROGRAM`` rows of one group (thousands of
programs, so no SM idles through a ragged last wave) walks its rows a few at a time,
recomputes the gate and the normalised value from x, z and the saved 1/rms, and sums
dweight over its rows in fp32 before one reduction over programs. Without z it is the plain
RMSNorm of the block pre-norm. Rows are read through their stride, so z can be a slice of
``in_proj``'s output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bsmamba2.ops.triton.common import configs, launch, sigmoid

ROWS_PER_PROGRAM = 64  # backward: rows summed into one fp32 dweight partial
TUNING = ((2, 1, {"ELEMS": 512}), (4, 1, {"ELEMS": 1024}), (4, 1, {"ELEMS": 2048}))
"""Autotune candidates (num_warps, num_stages, meta) of both kernels: ELEMS elements per tile.
Few warps win the backward; the forward hardly cares (docs/benchmarks.md, "Kernel design measurements")."""


def _block_m(args: dict) -> int:
    """Rows per tile: ``ELEMS`` elements in all, whatever the group size."""
    return max(1, args["ELEMS"] // args["BLOCK_G"])


@triton.jit
def _gated(x_ptr, z_ptr, rows, cols, mask, sxm, szm, HAS_Z: tl.constexpr):
    """(x, z, x · SiLU(z)) of a tile, in fp32."""
    x = tl.load(x_ptr + rows[:, None] * sxm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + rows[:, None] * szm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        return x, z, x * z * sigmoid(z)
    return x, x, x


@triton.autotune(configs=configs(*TUNING, interpret={"ELEMS": 256}),
                 key=["GS", "HAS_Z", "Dm"])
@triton.heuristics({"BLOCK_M": _block_m})
@triton.jit(do_not_specialize=["M"])  # the row count varies with the batch: one compile for all
def _norm_fwd(
    x_ptr, z_ptr, w_ptr, y_ptr, rstd_ptr, M, Dm, NG, sxm, szm, eps,
    GS: tl.constexpr, HAS_Z: tl.constexpr, BLOCK_G: tl.constexpr, ELEMS: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    gi = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    j = tl.arange(0, BLOCK_G)
    cols = gi * GS + j
    mask = (rows < M)[:, None] & (j < GS)[None, :]
    _, _, v = _gated(x_ptr, z_ptr, rows, cols, mask, sxm, szm, HAS_Z)
    rstd = tl.rsqrt(tl.sum(v * v, 1) / GS + eps)
    w = tl.load(w_ptr + cols, mask=j < GS, other=0.0).to(tl.float32)
    y = v * rstd[:, None] * w[None, :]
    tl.store(y_ptr + rows[:, None] * Dm + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows * NG + gi, rstd, mask=rows < M)


@triton.autotune(configs=configs(*TUNING, interpret={"ELEMS": 256}),
                 key=["GS", "HAS_Z", "Dm"])
@triton.heuristics({"BLOCK_M": _block_m})
@triton.jit
def _norm_bwd(
    x_ptr, z_ptr, w_ptr, dy_ptr, rstd_ptr, dx_ptr, dz_ptr, dw_ptr, M, Dm, NG, sxm, szm, sym,
    ROWS, GS: tl.constexpr, HAS_Z: tl.constexpr, BLOCK_G: tl.constexpr, ELEMS: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    gi = tl.program_id(1)
    pid = tl.program_id(0)
    lo = pid.to(tl.int64) * ROWS
    hi = tl.minimum(lo + ROWS, M)
    j = tl.arange(0, BLOCK_G)
    cols = gi * GS + j
    mj = j < GS
    w = tl.load(w_ptr + cols, mask=mj, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for start in range(lo, hi, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mr = rows < hi
        mask = mr[:, None] & mj[None, :]
        x, z, v = _gated(x_ptr, z_ptr, rows, cols, mask, sxm, szm, HAS_Z)
        dy = tl.load(dy_ptr + rows[:, None] * sym + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows * NG + gi, mask=mr, other=0.0)
        nrm = v * rstd[:, None]
        dw += tl.sum(dy * nrm, 0)
        dn = dy * w[None, :]
        dv = rstd[:, None] * (dn - nrm * (tl.sum(dn * nrm, 1) / GS)[:, None])
        if HAS_Z:
            s = sigmoid(z)
            tl.store(dz_ptr + rows[:, None] * Dm + cols[None, :],
                     (dv * x * s * (1.0 + z * (1.0 - s))).to(dz_ptr.dtype.element_ty), mask=mask)
            dv = dv * z * s
        tl.store(dx_ptr + rows[:, None] * Dm + cols[None, :], dv.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + pid.to(tl.int64) * Dm + cols, dw, mask=mj)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(M, D) view with unit column stride (a copy only when no such view exists)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


class GatedRMSNorm(torch.autograd.Function):
    """RMSNorm(x · SiLU(z)) · weight; gradients for x, z and weight."""

    @staticmethod
    def forward(ctx, x, z, weight, eps, group_size):
        d = x.shape[-1]
        gs = d if group_size is None else group_size
        if d % gs or weight.shape != (d,) or (z is not None and z.shape != x.shape):
            raise ValueError(f"gated_rms_norm shapes: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
                             f"group_size {group_size}")
        x2 = _rows(x)
        z2 = _rows(z) if z is not None else x2
        m, ng = x2.shape[0], d // gs
        y = x.new_empty(m, d)
        rstd = x.new_empty(m, ng, dtype=torch.float32)
        if m:
            def grid(meta):
                return triton.cdiv(m, meta["BLOCK_M"]), ng

            launch(_norm_fwd, grid, x2, z2, weight, y, rstd, m, d, ng, x2.stride(0), z2.stride(0), eps, GS=gs,
                            HAS_Z=z is not None, BLOCK_G=triton.next_power_of_2(gs))
        ctx.save_for_backward(x2, z2 if z is not None else None, weight, rstd)
        ctx.shape = (x.shape, gs)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, z2, weight, rstd = ctx.saved_tensors
        shape, gs = ctx.shape
        m, d = x2.shape
        ng = d // gs
        dy = _rows(dy)
        dx = x2.new_empty(m, d)
        dz = z2.new_empty(m, d) if z2 is not None else None
        nprog = max(1, triton.cdiv(m, ROWS_PER_PROGRAM))
        dw = x2.new_empty(nprog, d, dtype=torch.float32)
        if m:
            zz = z2 if z2 is not None else x2
            launch(_norm_bwd, (nprog, ng),
                x2, zz, weight, dy, rstd, dx, dz if dz is not None else dx, dw, m, d, ng, x2.stride(0),
                zz.stride(0), dy.stride(0), ROWS_PER_PROGRAM, GS=gs, HAS_Z=z2 is not None,
                BLOCK_G=triton.next_power_of_2(gs))
        else:
            dw.zero_()
        return (dx.view(shape), dz.view(shape) if dz is not None else None,
                dw.sum(0).to(weight.dtype), None, None)


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor, eps: float = 1e-5,
                   group_size: int | None = None) -> torch.Tensor:
    """Triton gated RMSNorm; contract of :func:`bsmamba2.ops.reference.norm.gated_rms_norm`."""
    return GatedRMSNorm.apply(x, z, weight, eps, group_size)
