"""Causal depthwise conv1d (widths 2–4) with bias and fused SiLU, forward and backward.

Channel-last input (b, l, d) read through its strides, so the x|B|C slice of ``in_proj``'s
output feeds the kernel without a copy, and the output's x / B / C views feed the scan the
same way. Both kernels are memory bound by design (fp32 math, input-dtype I/O):

- forward: one program per (sequence, span of ``TILES`` × ``BLOCK_L`` steps, block of
  channels), tile by tile, each tile reading the W − 1 earlier steps as a halo (shifted loads
  of the same rows, served by the cache); weights and bias are loaded once per program;
- backward: one program per (sequence, span of steps, block of channels) splits its span into
  ``BLOCK_C`` sub-chunks walked in lockstep, one step at a time, keeping the last W inputs and
  pre-activation gradients in registers: x and dy are read once (plus a W − 1 step halo per
  sub-chunk) and dx written once, the pre-activation is recomputed once per step, and the
  next step's loads are issued before the current step's arithmetic. dweight/dbias partial
  sums (fp32, one per program) are reduced with torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bsmamba2.ops.triton.common import INTERPRET, along, configs, launch, sigmoid

SPAN = 64 if INTERPRET else 256
"""Backward: steps per program (a power of two), small in the interpreter so that tests at
short lengths still cover several programs per sequence."""

FWD_TUNING = ((4, 1, {"BLOCK_L": 16, "BLOCK_D": 256, "TILES": 2}),
              (4, 1, {"BLOCK_L": 8, "BLOCK_D": 256, "TILES": 4}))
"""Forward autotune candidates (num_warps, num_stages, meta): each program walks TILES tiles of
BLOCK_L steps (weights and bias loaded once), ~30 instructions an element: memory bound. The
best two of 27 tried on the paper's time axis (docs/benchmarks.md, "Kernel design
measurements"). Few candidates: every one costs a compile at the first call."""

BWD_TUNING = ((1, 1, {"BLOCK_C": 2, "BLOCK_D": 256, "PREFETCH": 1}),
              (1, 1, {"BLOCK_C": 2, "BLOCK_D": 256, "PREFETCH": 2}),
              (1, 1, {"BLOCK_C": 1, "BLOCK_D": 256, "PREFETCH": 2}),
              (1, 1, {"BLOCK_C": 4, "BLOCK_D": 128, "PREFETCH": 1}))
"""Backward autotune candidates: one warp per program; with BLOCK_D = 256 each thread keeps its
sub-chunks in its own registers (16-byte loads, no shuffles). 170–250 registers, no spills
(ptxas, sm_90a, bf16, W = 4). PREFETCH 2 loads two steps ahead: more bytes in flight."""


@triton.jit
def _tap(w_ptr, d, md, swd, swk, lag: tl.constexpr, W: tl.constexpr):
    """Coefficient of x[t − lag] in pre[t] (w[:, W − 1 − lag]), fp32; zeros when lag ≥ W."""
    if lag < W:
        return tl.load(w_ptr + d * swd + (W - 1 - lag) * swk, mask=md, other=0.0).to(tl.float32)
    return tl.zeros(d.shape, dtype=tl.float32)


@triton.jit
def _bias(b_ptr, d, md, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        return tl.load(b_ptr + d, mask=md, other=0.0).to(tl.float32)
    return tl.zeros(d.shape, dtype=tl.float32)


@triton.jit
def _params(w_ptr, b_ptr, d, md, swd, swk, W: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The bias and the coefficients of x[t], x[t − 1], x[t − 2], x[t − 3] as (1, channels) rows."""
    return (_bias(b_ptr, d, md, HAS_BIAS)[None, :], _tap(w_ptr, d, md, swd, swk, 0, W)[None, :],
            _tap(w_ptr, d, md, swd, swk, 1, W)[None, :], _tap(w_ptr, d, md, swd, swk, 2, W)[None, :],
            _tap(w_ptr, d, md, swd, swk, 3, W)[None, :])


@triton.jit
def _load_rows(base, t, stride, md, lo, hi):
    """Rows t of a (steps, channels) tile where lo ≤ t < hi (zeros elsewhere), input dtype."""
    m = ((t >= lo) & (t < hi))[:, None] & md[None, :]
    return tl.load(base + t.to(tl.int64)[:, None] * stride, mask=m, other=0.0)


@triton.autotune(configs=configs(*FWD_TUNING, interpret={"BLOCK_L": 16, "BLOCK_D": 32, "TILES": 2}),
                 key=["Dc", "W", "L_BUCKET", "HAS_BIAS", "SILU"])
@triton.jit
def _conv_fwd(
    x_ptr, w_ptr, b_ptr, y_ptr, L, Dc, L_BUCKET, sxb, sxl, sxd, syl, swd, swk,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, TILES: tl.constexpr,
):
    nl = tl.cdiv(L, BLOCK_L * TILES)
    pid = tl.program_id(0).to(tl.int64)  # (sequence, block of steps): no 65535 limit on either
    bi = pid // nl
    start = (pid % nl).to(tl.int32) * (BLOCK_L * TILES)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = d < Dc
    bias, v0, v1, v2, v3 = _params(w_ptr, b_ptr, d, md, swd, swk, W, HAS_BIAS)
    x_base = x_ptr + bi * sxb + d[None, :] * sxd
    y_base = y_ptr + bi * L * Dc + d[None, :]
    for i in range(TILES):
        t = start + i * BLOCK_L + tl.arange(0, BLOCK_L)
        acc = bias + v0 * _load_rows(x_base, t, sxl, md, 0, L).to(tl.float32)
        acc += v1 * _load_rows(x_base, t - 1, sxl, md, 0, L).to(tl.float32)
        if W > 2:
            acc += v2 * _load_rows(x_base, t - 2, sxl, md, 0, L).to(tl.float32)
        if W > 3:
            acc += v3 * _load_rows(x_base, t - 3, sxl, md, 0, L).to(tl.float32)
        if SILU:
            acc = acc / (1.0 + tl.exp(-acc))  # acc · sigmoid(acc) with one division
        m = (t < L)[:, None] & md[None, :]
        tl.store(y_base + t.to(tl.int64)[:, None] * syl, acc.to(y_ptr.dtype.element_ty), mask=m)


@triton.autotune(configs=configs(*BWD_TUNING, interpret={"BLOCK_C": 4, "BLOCK_D": 32, "PREFETCH": 2}),
                 key=["Dc", "W", "L_BUCKET", "HAS_BIAS", "SILU"])
@triton.jit
def _conv_bwd(
    x_ptr, w_ptr, b_ptr, dy_ptr, dx_ptr, part_ptr, L, Dc, L_BUCKET, sxb, sxl, sxd, syb, syl,
    sdxl, swd, swk,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, PREFETCH: tl.constexpr,
):
    bi = tl.program_id(0).to(tl.int64)
    pt = tl.program_id(1)
    nt = tl.num_programs(1)
    steps = tl.cdiv(L, nt * BLOCK_C)  # sub-chunk length, the same for every program
    t0 = (pt * BLOCK_C + tl.arange(0, BLOCK_C)) * steps  # first step of each sub-chunk
    t1 = tl.minimum(t0 + steps, L)  # its end
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = d < Dc
    bias, v0, v1, v2, v3 = _params(w_ptr, b_ptr, d, md, swd, swk, W, HAS_BIAS)
    x_base = x_ptr + bi * sxb + d[None, :] * sxd
    dy_base = dy_ptr + bi * syb + d[None, :]
    dx_base = dx_ptr + bi * L * Dc + d[None, :]
    # x[t − 1], x[t − 2], x[t − 3] and dpre[t − 1], dpre[t − 2], dpre[t − 3] of the current t
    x1 = _load_rows(x_base, t0 - 1, sxl, md, 0, L).to(tl.float32)
    x2 = _load_rows(x_base, t0 - 2, sxl, md, 0, L).to(tl.float32)
    x3 = _load_rows(x_base, t0 - 3, sxl, md, 0, L).to(tl.float32)
    # Three separate tl.zeros: Triton's code generator carries a name through the loop only
    # when the loop body gives it a new value, so `g2 = g1` here would freeze g2 at zero (the
    # body's `g2 = g1` would look unchanged), which the interpreter does not reproduce.
    g1 = tl.zeros((BLOCK_C, BLOCK_D), dtype=tl.float32)
    g2 = tl.zeros((BLOCK_C, BLOCK_D), dtype=tl.float32)
    g3 = tl.zeros((BLOCK_C, BLOCK_D), dtype=tl.float32)
    # dpre[t] is needed up to t1 + W − 2 (the halo of dx), computed from x and dy up to there
    t_hi = tl.minimum(t1 + W - 1, L)
    x_next = _load_rows(x_base, t0, sxl, md, 0, t_hi)
    dy_next = _load_rows(dy_base, t0, syl, md, 0, t_hi)
    x_later = x_next  # the step after next, when PREFETCH is 2
    dy_later = dy_next
    if PREFETCH == 2:
        x_later = _load_rows(x_base, t0 + 1, sxl, md, 0, t_hi)
        dy_later = _load_rows(dy_base, t0 + 1, syl, md, 0, t_hi)
    db = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dw0 = db
    dw1 = db
    dw2 = db
    dw3 = db
    for s in range(0, steps + W - 1):
        t = t0 + s
        x0 = x_next.to(tl.float32)
        dy = dy_next.to(tl.float32)
        if PREFETCH == 2:
            x_next = x_later
            dy_next = dy_later
            x_later = _load_rows(x_base, t + 2, sxl, md, 0, t_hi)
            dy_later = _load_rows(dy_base, t + 2, syl, md, 0, t_hi)
        else:
            x_next = _load_rows(x_base, t + 1, sxl, md, 0, t_hi)
            dy_next = _load_rows(dy_base, t + 1, syl, md, 0, t_hi)
        pre = bias + v0 * x0 + v1 * x1
        if W > 2:
            pre += v2 * x2
        if W > 3:
            pre += v3 * x3
        g0 = dy  # zero from t_hi on: dy is masked there
        if SILU:
            sg = sigmoid(pre)
            g0 = dy * sg * (1.0 + pre * (1.0 - sg))
        # dweight / dbias from the steps of this sub-chunk
        own = tl.where((t < t1)[:, None], g0, 0.0)
        db += tl.sum(own, 0)
        dw0 += tl.sum(own * x0, 0)
        dw1 += tl.sum(own * x1, 0)
        if W > 2:
            dw2 += tl.sum(own * x2, 0)
        if W > 3:
            dw3 += tl.sum(own * x3, 0)
        # dx[u] = Σ_lag v_lag · dpre[u + lag] for u = t − (W − 1)
        if W == 2:
            dx = v1 * g0 + v0 * g1
        elif W == 3:
            dx = v2 * g0 + v1 * g1 + v0 * g2
        else:
            dx = v3 * g0 + v2 * g1 + v1 * g2 + v0 * g3
        u = t - (W - 1)
        mu = ((u >= t0) & (u < t1))[:, None] & md[None, :]
        tl.store(dx_base + u.to(tl.int64)[:, None] * sdxl, dx.to(dx_ptr.dtype.element_ty), mask=mu)
        x3 = x2
        x2 = x1
        x1 = x0
        g3 = g2
        g2 = g1
        g1 = g0
    # partials (programs, W + 1, Dc): row W − 1 − lag holds dweight[:, W − 1 − lag], row W dbias
    out = part_ptr + ((bi * nt + pt) * (W + 1)) * Dc + d
    tl.store(out + (W - 1) * Dc, dw0, mask=md)
    tl.store(out + (W - 2) * Dc, dw1, mask=md)
    if W > 2:
        tl.store(out + (W - 3) * Dc, dw2, mask=md)
    if W > 3:
        tl.store(out, dw3, mask=md)
    tl.store(out + W * Dc, db, mask=md)


def _bucket(length: int) -> int:
    """Autotune key for the length: its power-of-two bucket (no retuning per exact length)."""
    return triton.next_power_of_2(length)


def _channel_unit(t: torch.Tensor) -> torch.Tensor:
    """t itself when its channels are contiguous, else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


class CausalConv1d(torch.autograd.Function):
    """y = act(causal depthwise conv(x) + bias) on (b, l, d); gradients for x, weight, bias."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation, reverse):
        if activation not in (None, "silu"):
            raise ValueError(f"unsupported activation {activation!r}")
        if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[-1]:
            raise ValueError(f"causal_conv1d shapes: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
        if not 2 <= weight.shape[1] <= 4:
            raise ValueError(f"Triton causal_conv1d supports widths 2 to 4, not {weight.shape[1]}")
        b, length, dc = x.shape
        y = x.new_empty(x.shape)
        if y.numel():
            def grid(meta):
                steps = meta["BLOCK_L"] * meta["TILES"]
                return b * triton.cdiv(length, steps), triton.cdiv(dc, meta["BLOCK_D"])

            (xp, yp), (sxb, sxl, sxd, _, syl, _) = along(reverse, x, y)
            launch(_conv_fwd, grid,
                xp, weight, bias if bias is not None else weight, yp, length, dc, _bucket(length),
                sxb, sxl, sxd, syl, *weight.stride(), W=weight.shape[1], HAS_BIAS=bias is not None,
                SILU=activation == "silu")
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = activation == "silu"
        ctx.reverse = reverse
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        b, length, dc = x.shape
        width = weight.shape[1]
        dy = _channel_unit(dy)
        dx = x.new_empty(x.shape)
        nt = triton.cdiv(length, SPAN)
        part = x.new_empty(b * nt, width + 1, dc, dtype=torch.float32)
        if dx.numel():
            def grid(meta):
                return b, nt, triton.cdiv(dc, meta["BLOCK_D"])

            (xp, dyp, dxp), (sxb, sxl, sxd, syb, syl, _, _, sdxl, _) = along(ctx.reverse, x, dy, dx)
            launch(_conv_bwd, grid,
                xp, weight, bias if bias is not None else weight, dyp, dxp, part, length, dc,
                _bucket(length), sxb, sxl, sxd, syb, syl, sdxl, *weight.stride(), W=width,
                HAS_BIAS=bias is not None, SILU=ctx.silu)
        else:
            part.zero_()
        sums = part.sum(0)
        dbias = sums[width].to(bias.dtype) if bias is not None else None
        return dx, sums[:width].t().to(weight.dtype), dbias, None, None


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None, *, reverse: bool = False) -> torch.Tensor:
    """Triton causal depthwise conv1d; contract of :func:`bsmamba2.ops.reference.conv.causal_conv1d`.
    ``reverse``: the conv of the reversed sequences, in their own order (flip, conv, flip),
    computed without flipped copies."""
    return CausalConv1d.apply(x, weight, bias, activation, reverse)
