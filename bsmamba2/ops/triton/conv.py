"""Causal depthwise conv1d (widths 2–4) with bias and fused SiLU, forward and backward.

Channel-last input (b, l, d) read through its strides, so the x|B|C slice of ``in_proj``'s
output feeds the kernel without a copy, and the output's x / B / C views feed the scan the
same way. One program per (sequence, block of channels) walks the sequence in blocks of
``BLOCK_L`` steps; the backward recomputes the pre-activation (no saved intermediate) and
sums dweight/dbias per program in fp32 before one reduction over sequences.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bsmamba2.ops.triton.common import configs, sigmoid


@triton.jit
def _pre_activation(x_row, w_ptr, swd, swk, bias, t, d, md, L, sxl, sxd, W: tl.constexpr):
    """bias + Σ_k w[:, k] · x[t − W + 1 + k] (zeros before the start), in fp32."""
    acc = tl.zeros((t.shape[0], d.shape[0]), dtype=tl.float32) + bias[None, :]
    for k in tl.static_range(W):
        ts = t - (W - 1) + k
        m = ((ts >= 0) & (ts < L))[:, None] & md[None, :]
        xv = tl.load(x_row + ts[:, None] * sxl + d[None, :] * sxd, mask=m, other=0.0)
        wk = tl.load(w_ptr + d * swd + k * swk, mask=md, other=0.0).to(tl.float32)
        acc += xv.to(tl.float32) * wk[None, :]
    return acc


@triton.autotune(configs=configs((4, 2), (8, 2)), key=["Dc", "W"])
@triton.jit
def _conv_fwd(
    x_ptr, w_ptr, bias_ptr, y_ptr, L, Dc, NDB, sxb, sxl, sxd, swd, swk,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // NDB
    d = (pid % NDB) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = d < Dc
    bias = tl.load(bias_ptr + d, mask=md, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros(
        (BLOCK_D,), dtype=tl.float32)
    x_row = x_ptr + bi * sxb
    for start in range(0, L, BLOCK_L):
        t = start + tl.arange(0, BLOCK_L)
        acc = _pre_activation(x_row, w_ptr, swd, swk, bias, t, d, md, L, sxl, sxd, W)
        if SILU:
            acc = acc * sigmoid(acc)
        m = (t < L)[:, None] & md[None, :]
        tl.store(y_ptr + (bi * L + t[:, None]) * Dc + d[None, :], acc.to(y_ptr.dtype.element_ty), mask=m)


@triton.autotune(configs=configs((4, 2), (8, 2)), key=["Dc", "W"])
@triton.jit
def _conv_bwd(
    x_ptr, w_ptr, bias_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr, L, Dc, NDB, sxb, sxl, sxd, swd, swk,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // NDB
    d = (pid % NDB) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = d < Dc
    bias = tl.load(bias_ptr + d, mask=md, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros(
        (BLOCK_D,), dtype=tl.float32)
    x_row = x_ptr + bi * sxb
    db = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dw0 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dw1 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dw2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dw3 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for start in range(0, L, BLOCK_L):
        t = start + tl.arange(0, BLOCK_L)
        dx = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
        for j in tl.static_range(W):
            # dx_t = Σ_j w[:, W−1−j] · dpre_{t+j}
            tj = t + j
            mj = (tj < L)[:, None] & md[None, :]
            g = tl.load(dy_ptr + (bi * L + tj[:, None]) * Dc + d[None, :], mask=mj, other=0.0)
            g = g.to(tl.float32)
            if SILU:
                pre = _pre_activation(x_row, w_ptr, swd, swk, bias, tj, d, md, L, sxl, sxd, W)
                s = sigmoid(pre)
                g = g * s * (1.0 + pre * (1.0 - s))
            wj = tl.load(w_ptr + d * swd + (W - 1 - j) * swk, mask=md, other=0.0).to(tl.float32)
            dx += g * wj[None, :]
            if j == 0:
                db += tl.sum(g, 0)
                for k in tl.static_range(W):
                    ts = t - (W - 1) + k
                    m = ((ts >= 0) & (ts < L))[:, None] & md[None, :]
                    xv = tl.load(x_row + ts[:, None] * sxl + d[None, :] * sxd, mask=m, other=0.0)
                    part = tl.sum(g * xv.to(tl.float32), 0)
                    if k == 0:
                        dw0 += part
                    elif k == 1:
                        dw1 += part
                    elif k == 2:
                        dw2 += part
                    else:
                        dw3 += part
        m = (t < L)[:, None] & md[None, :]
        tl.store(dx_ptr + (bi * L + t[:, None]) * Dc + d[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m)
    out = dw_ptr + (bi * Dc + d) * W
    tl.store(out, dw0, mask=md)
    tl.store(out + 1, dw1, mask=md)
    if W > 2:
        tl.store(out + 2, dw2, mask=md)
    if W > 3:
        tl.store(out + 3, dw3, mask=md)
    tl.store(db_ptr + bi * Dc + d, db, mask=md)


def _launch_args(x: torch.Tensor, weight: torch.Tensor) -> tuple[int, int, int, int, int]:
    b, length, dc = x.shape
    block_d = min(64, triton.next_power_of_2(dc))
    block_l = 64 if length >= 64 else max(16, triton.next_power_of_2(length))
    return block_d, triton.cdiv(dc, block_d), block_l, b, dc


class CausalConv1d(torch.autograd.Function):
    """y = act(causal depthwise conv(x) + bias) on (b, l, d); gradients for x, weight, bias."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation):
        if activation not in (None, "silu"):
            raise ValueError(f"unsupported activation {activation!r}")
        if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[-1]:
            raise ValueError(f"causal_conv1d shapes: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
        if not 2 <= weight.shape[1] <= 4:
            raise ValueError(f"Triton causal_conv1d supports widths 2 to 4, not {weight.shape[1]}")
        block_d, ndb, block_l, b, dc = _launch_args(x, weight)
        y = x.new_empty(x.shape)
        _conv_fwd[(b * ndb,)](
            x, weight, bias if bias is not None else weight, y, x.shape[1], dc, ndb, *x.stride(),
            *weight.stride(), W=weight.shape[1], HAS_BIAS=bias is not None,
            SILU=activation == "silu", BLOCK_L=block_l, BLOCK_D=block_d)
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = activation == "silu"
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        block_d, ndb, block_l, b, dc = _launch_args(x, weight)
        width = weight.shape[1]
        dy = dy.contiguous()
        dx = x.new_empty(x.shape)
        dw = x.new_empty(b, dc, width, dtype=torch.float32)
        db = x.new_empty(b, dc, dtype=torch.float32)
        _conv_bwd[(b * ndb,)](
            x, weight, bias if bias is not None else weight, dy, dx, dw, db, x.shape[1], dc, ndb,
            *x.stride(), *weight.stride(), W=width, HAS_BIAS=bias is not None, SILU=ctx.silu,
            BLOCK_L=block_l, BLOCK_D=block_d)
        dbias = db.sum(0).to(bias.dtype) if bias is not None else None
        return dx, dw.sum(0).to(weight.dtype), dbias, None


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None) -> torch.Tensor:
    """Triton causal depthwise conv1d; contract of :func:`bsmamba2.ops.reference.causal_conv1d`."""
    return CausalConv1d.apply(x, weight, bias, activation)
