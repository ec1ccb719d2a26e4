"""The Mamba-3 scan in Triton (SISO and MIMO rank R), forward and backward.

The math is :mod:`bsmamba2.ops.reference.mamba3`'s chunked form: per head, SSD (see
:mod:`bsmamba2.ops.triton.ssd`) with the head's rotated q̃, k̃, a per-token decay e^{A_tΔ_t},
the input weight ω_s off the diagonal and γ_t on it. A chunk holds T steps, i.e. T·R rows
(row i is step i // R, rank i % R; T = 64 / R, 32 / R in fp32): the rows of all ranks go
through the same products, so MIMO is SISO with R times the rows and a rank reduction at the end.

The kernels are organised as the SSD kernels. The state's N columns are held as two
(·, N/2) halves, the first and the second column of every rotation pair (j, j+N/2) (MIMO's
layout; SISO's pairs (2j, 2j+1) are brought to it by :func:`halves_first` before the kernels,
or by the caller (``halved_pairs``: the layer permutes in_proj's rows), so that each half is a
contiguous load: loading every other column cost 40% of the forward):
q̃, k̃ tiles are loaded as their two halves, biased and rotated in registers with the head's
cos φ, sin φ (the backward's product kernels read them rotated, made once per call by a small
pass), and every product runs at full width as the sum of the halves' (q̃·k̃ᵀ = q̃₀k̃₀ᵀ + q̃₁k̃₁ᵀ).

* forward — one program per (sequence, head) walks the chunks with the fp32 (N, P) state in
  registers (two (N/2, P) halves, or four quarters: :func:`rotation_parts`), each chunk's
  tiles loaded during the chunk before: (q̃·k̃ᵀ ⊙ W)·v inside the chunk (W: e^{S_t−S_s} ω_s below
  the diagonal, γ_t on it), e^{S_t} q̃·H across chunks, D·v, the gate and the rank contraction.
  The states are never kept for the backward.
* backward — two cheap serial passes per (sequence, head) store, per chunk, the entering state
  (the forward without outputs) and the gradient of the leaving state (a reverse pass); then
  every chunk in parallel: dv with the decay, ω, γ, z, D and ``mimo_*`` gradients, and each
  head's dk̃ and then dq̃ in the rotated frame (three launches, one program per (sequence,
  head, chunk), storing per-head fp32 dq̃, dk̃ for this call only); then one pass per
  (sequence, group, block of steps) turns every head's dq̃, dk̃ back by its angles (on the
  rotated pairs only: the unrotated ones pass through), makes its dφ and bias gradients and
  adds up the group's heads, which share q and k. Keeping the
  rotation's gradient out of the product kernels is what keeps their live set in registers
  (docs/benchmarks.md). Short sequences (one chunk) skip the serial passes. Bias, D and
  ``mimo_*`` gradients are per-chunk (per-block) partial sums added up by PyTorch.
  No atomics.

φ (the cumulative angles, (b, l, h, s)) is made in fp32 by the forward itself, which walks
the steps of each (sequence, head) in order anyway, from θ and Δ (θ read in place: the
layer's angles are shared by the heads), and stored only when a backward follows; its
gradient is :mod:`bsmamba2.ops.triton.mamba3_angles`' one pass. ω, γ (the trapezoid
weights, (b, h, l)) are made by PyTorch around the kernels when a backward follows (its
autograd differentiates the sigmoid), else by the forward from Δ and the gate as it loads
them (no passes around the kernel: A·Δ, Δ and the gate read at the layer's strides).
``reverse`` without a backward: the forward walks each sequence from its last step (the
bidirectional block's backward mixer, no flipped copies); with one, flipped copies (the
backward kernels walk forwards only). sin and cos are
:func:`bsmamba2.ops.triton.common.sincos` (one reduction for
both, libdevice's accuracy), in the forward only for the rotated pairs' columns where they
fill a quarter of the state or less (:func:`rotation_parts`). No dot accumulator is
transposed into another dot: each orientation a product needs has its own dot from loaded
tiles.

Dot operands are the input dtype (bf16/fp16 on tensor cores), fp32 accumulation, except
where the angles' gradient is made: the states and their gradients are made on fp32 (tf32 on
a GPU) operands and kept in fp32, the dq̃/dk̃ products take every operand split into two
16-bit halves (about 16 significant bits, :func:`_split_dot`), and the turning back and dφ run
in fp32 outside the products. dφ is a cancelling sum (turning every q̃, k̃ of a head by one
angle changes nothing, so Σ_t dφ_t = 0) whose tail sums are the angles' gradient: the two
sides of every pair of rows must use the same values, and with the dq̃/dk̃ products on plain
bf16 operands it missed its tolerance at length 801 (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from bsmamba2.ops.reference.mamba3 import halves_first
from bsmamba2.ops.triton.common import (
    INTERPRET,
    TL_DTYPES,
    backward_ahead,
    configs,
    cumsum_grad,
    dot_dtype,
    exp,
    launch,
    sigmoid,
    sincos,
)
from bsmamba2.ops.triton.mamba3_angles import PI, angle_grads, tanh

CHUNK_ROWS = 64
FWD_ROWS = 32
"""Rows per chunk of the forward's output pass (at most): as the SSD forward's, smaller tiles
than the backward's, which keep the pass's registers in bounds."""
TURN_ROWS = 32
"""Rows per block of :func:`_rotate` (at most): a pass without products, whose blocks need not
be chunks."""
TURN_BACK_ROWS = 16
"""Rows per block of :func:`_turn_back` (at most): its program holds one head's tiles, the next
head's (loaded ahead) and the group's sums, which 16 rows keep in registers at 4 warps."""
V_CONFIGS = configs((4, 1), (8, 1))
"""Autotune candidates of :func:`_chunk_bwd_v`; on a GPU also 8 warps capped at 128 registers (two
programs per SM: offline, sm_90a, its PART_VX fits them unspilled). The same cap on
:func:`_chunk_bwd_qk` and :func:`_turn_back` changed nothing on the H200 (docs/benchmarks.md)."""
if not INTERPRET:
    V_CONFIGS += [triton.Config({}, num_warps=8, num_stages=1, maxnreg=128)]
PART_DK, PART_DQ = (tl.constexpr(i) for i in range(2))
"""What a launch of :func:`_chunk_bwd_qk` computes: the per-head dk̃, or dq̃."""
PART_VX, PART_VS = (tl.constexpr(i) for i in range(2))
"""What a launch of :func:`_chunk_bwd_v` computes: dx (and the states' share of dadt, dω), or
the rest (dz, dadt, dω, dγ)."""


@triton.jit
def _rows(v, T: tl.constexpr, R: tl.constexpr):
    """A per-step vector (T,) repeated for the R rows of each step: (T·R,)."""
    return tl.reshape(tl.broadcast_to(v[:, None], (T, R)), (T * R,))


@triton.jit
def _rows2(x, T: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    """A per-step tile (T, C) repeated for the R rows of each step: (T·R, C)."""
    return tl.reshape(tl.broadcast_to(x[:, None, :], (T, R, C)), (T * R, C))


@triton.jit
def _rank_sum(x, T: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    """(T·R, C) → (T, C): the sum over the ranks of each step."""
    return tl.sum(tl.reshape(x, (T, R, C)), 1)


@triton.jit
def _step_sum(x, T: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    """(T·R, C) → (R, C): the sum over the steps, per rank."""
    return tl.sum(tl.reshape(x, (T, R, C)), 0)


@triton.jit
def _halves(N: tl.constexpr, BH: tl.constexpr):
    """The columns (j, j+N/2) of the two halves of every rotation pair j < N/2, over a tile of
    BH ≥ N/2 pairs, and which pairs exist."""
    j = tl.arange(0, BH)
    return j, j + N // 2, j < N // 2


@triton.jit
def _turns(phi_ptr, bi, hi, t, mt, L, H, S, T: tl.constexpr, R: tl.constexpr, BH: tl.constexpr):
    """cos φ and sin φ of every pair per row, (T·R, BH) (1 and 0 on the unrotated pairs j ≥ S)."""
    j = tl.arange(0, BH)
    phi = tl.load(phi_ptr + ((bi * L + t[:, None]) * H + hi) * S + j[None, :],
                  mask=mt[:, None] & (j < S)[None, :], other=0.0)
    sin, cos = sincos(phi)
    return _rows2(cos, T, R, BH), _rows2(sin, T, R, BH)


@triton.jit
def _rank_rows(x, T: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    """A per-rank tile (R, C) repeated for the T steps: (T·R, C), row i of rank i % R."""
    return tl.reshape(tl.broadcast_to(x[None, :, :], (T, R, C)), (T * R, C))


@triton.jit
def _rank_weight(ptr, hi, T: tl.constexpr, P: tl.constexpr, R: tl.constexpr):
    """Head hi's (R, P) MIMO weight repeated for the rows of the T steps: (T·R, P) fp32."""
    w = tl.load(ptr + (hi * R + tl.arange(0, R))[:, None] * P + tl.arange(0, P)[None, :])
    return _rank_rows(w, T, R, P)


@triton.jit
def _rotated(x_ptr, bias_ptr, bi, gi, hi, t, mt, L, G, i0, i1, mj, cos, sin,
             T: tl.constexpr, R: tl.constexpr, N: tl.constexpr, BH: tl.constexpr):
    """Head hi's q̃ or k̃ of the chunk as its two halves: R(φ)·(x + bias) on every pair,
    fp32 (T·R, BH) each, 0 past the end and on missing pairs."""
    ROWS: tl.constexpr = T * R
    mr = _rows(mt, T, R)[:, None]
    row = ((((bi * L + _rows(t, T, R)) * R + tl.arange(0, ROWS) % R) * G + gi) * N)[:, None]
    bias = bias_ptr + ((hi * R + tl.arange(0, R)) * N)[:, None]  # (R, 1): the head's rows
    m = mr & mj[None, :]
    x0 = tl.load(x_ptr + row + i0[None, :], mask=m, other=0.0).to(tl.float32)
    x1 = tl.load(x_ptr + row + i1[None, :], mask=m, other=0.0).to(tl.float32)
    x0 = tl.where(m, x0 + _rank_rows(tl.load(bias + i0[None, :], mask=mj[None, :], other=0.0), T, R, BH), 0.0)
    x1 = tl.where(m, x1 + _rank_rows(tl.load(bias + i1[None, :], mask=mj[None, :], other=0.0), T, R, BH), 0.0)
    return x0 * cos - x1 * sin, x0 * sin + x1 * cos


@triton.jit
def _head_halves(ptr, bi, hi, t, mt, L, H, i0, i1, mj, T: tl.constexpr, R: tl.constexpr, N: tl.constexpr):
    """Head hi's rows of the chunk from a per-head (b, l, r, h, n) tensor as its two halves
    (T·R, BH), 0 past the end and on missing pairs."""
    ROWS: tl.constexpr = T * R
    row = ((((bi * L + _rows(t, T, R)) * R + tl.arange(0, ROWS) % R) * H + hi) * N)[:, None]
    m = _rows(mt, T, R)[:, None] & mj[None, :]
    return (tl.load(ptr + row + i0[None, :], mask=m, other=0.0),
            tl.load(ptr + row + i1[None, :], mask=m, other=0.0))


@triton.jit
def _store_head_halves(ptr, x0, x1, bi, hi, t, mt, L, H, i0, i1, mj, T: tl.constexpr, R: tl.constexpr,
                       N: tl.constexpr):
    """Store the two halves (T·R, BH) of head hi's rows into a per-head (b, l, r, h, n) tensor."""
    ROWS: tl.constexpr = T * R
    row = ((((bi * L + _rows(t, T, R)) * R + tl.arange(0, ROWS) % R) * H + hi) * N)[:, None]
    m = _rows(mt, T, R)[:, None] & mj[None, :]
    tl.store(ptr + row + i0[None, :], x0.to(ptr.dtype.element_ty), mask=m)
    tl.store(ptr + row + i1[None, :], x1.to(ptr.dtype.element_ty), mask=m)


@triton.jit
def _split(x, LOW: tl.constexpr, TO: tl.constexpr):
    """fp32 x as hi + lo, each rounded to LOW (the inputs' 16-bit dtype) and held as TO: a
    product taking both carries about 16 significant bits of x instead of LOW's 8 (tf32: 11)."""
    hi = x.to(LOW).to(tl.float32)
    return hi.to(TO), (x - hi).to(LOW).to(TO)


@triton.jit
def _split_dot(a, a_lo, b, b_lo, acc, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """acc + a·b from split operands (:func:`_split`): hi·hi + lo·hi + hi·lo, the lo·lo term
    (2⁻¹⁶ relative) dropped; without SPLIT the one product a·b."""
    acc = tl.dot(a, b, acc, input_precision=PREC)
    if SPLIT:
        acc = tl.dot(a_lo, b, acc, input_precision=PREC)
        acc = tl.dot(a, b_lo, acc, input_precision=PREC)
    return acc


@triton.jit
def _values(x_ptr, mx_ptr, bi, hi, t, mt, L, H, T: tl.constexpr, P: tl.constexpr, R: tl.constexpr,
            MIMO: tl.constexpr):
    """v rows (T·R, P): x_t ⊙ mimo_x_r (x_t for SISO), fp32; x per row and mimo_x per row."""
    op = tl.arange(0, P)
    tr = _rows(t, T, R)
    mr = _rows(mt, T, R)
    x = tl.load(x_ptr + ((bi * L + tr[:, None]) * H + hi) * P + op[None, :], mask=mr[:, None],
                other=0.0).to(tl.float32)
    if MIMO:
        mx = _rank_weight(mx_ptr, hi, T, P, R)
        return x * mx, x, mx
    return x, x, x


@triton.jit
def _decays(adt_ptr, w_ptr, g_ptr, bi, hi, t, mt, L, H):
    """S_t (the in-chunk cumulative A·Δ), its last value, ω_t and γ_t (0 past the end)."""
    base = (bi * H + hi) * L + t
    a = tl.load(adt_ptr + base, mask=mt, other=0.0)
    cs = tl.cumsum(a, 0)
    w = tl.load(w_ptr + base, mask=mt, other=0.0)
    return cs, tl.sum(a, 0), w, tl.load(g_ptr + base, mask=mt, other=0.0)


@triton.jit
def _weights(cs_r, w_r, g_r, tr, TRANSPOSED: tl.constexpr):
    """W (rows × rows): e^{S_t−S_s} ω_s for s < t, γ_t for s = t, 0 above; or its transpose.
    Also the strictly-lower decay e^{S_t−S_s} itself (transposed alike)."""
    if TRANSPOSED:
        seg = cs_r[None, :] - cs_r[:, None]
        lower = tr[None, :] > tr[:, None]
        E = tl.where(lower, exp(tl.minimum(seg, 0.0)), 0.0)
        W = tl.where(tr[None, :] == tr[:, None], g_r[:, None], E * w_r[:, None])
    else:
        seg = cs_r[:, None] - cs_r[None, :]
        lower = tr[:, None] > tr[None, :]
        E = tl.where(lower, exp(tl.minimum(seg, 0.0)), 0.0)
        W = tl.where(tr[:, None] == tr[None, :], g_r[:, None], E * w_r[None, :])
    return W, E


@triton.jit
def _gate(z_ptr, mz_ptr, bi, hi, t, mt, L, H, T: tl.constexpr, P: tl.constexpr, R: tl.constexpr,
          HAS_Z: tl.constexpr, MIMO: tl.constexpr):
    """Per row: the gate input (z or z ⊙ mimo_z_r), z itself, mimo_z (T·R, P)."""
    op = tl.arange(0, P)
    tr = _rows(t, T, R)
    mr = _rows(mt, T, R)
    if HAS_Z:
        z = tl.load(z_ptr + ((bi * L + tr[:, None]) * H + hi) * P + op[None, :], mask=mr[:, None],
                    other=0.0).to(tl.float32)
        if MIMO:
            mz = _rank_weight(mz_ptr, hi, T, P, R)
            return z * mz, z, mz
        return z, z, z
    zero = tl.zeros((T * R, P), dtype=tl.float32)
    return zero, zero, zero


@triton.jit
def _out_grad(dout_ptr, mo_ptr, zg, bi, hi, t, mt, L, H, T: tl.constexpr, P: tl.constexpr,
              R: tl.constexpr, MIMO: tl.constexpr, HAS_Z: tl.constexpr, HAS_O: tl.constexpr):
    """d out per row (T·R, P), the output weight per row (mimo_o, or 1), and dY: the gradient
    with respect to the pre-gate y."""
    ROWS: tl.constexpr = T * R
    orow = tl.arange(0, ROWS)
    op = tl.arange(0, P)
    tr = _rows(t, T, R)
    mr = _rows(mt, T, R)
    if HAS_O:
        do = tl.load(dout_ptr + ((bi * L + tr[:, None]) * H + hi) * P + op[None, :], mask=mr[:, None],
                     other=0.0).to(tl.float32)
        mo = _rank_weight(mo_ptr, hi, T, P, R) if MIMO else tl.full((ROWS, P), 1.0, dtype=tl.float32)
    else:  # per-rank outputs (b, l, r, h, p)
        do = tl.load(dout_ptr + (((bi * L + tr[:, None]) * R + (orow % R)[:, None]) * H + hi) * P
                     + op[None, :], mask=mr[:, None], other=0.0).to(tl.float32)
        mo = tl.full((ROWS, P), 1.0, dtype=tl.float32)
    dY = do * mo
    if HAS_Z:
        dY = dY * zg * sigmoid(zg)
    return do, mo, dY


@triton.jit
def _state_halves(ptr, BH: tl.constexpr, P: tl.constexpr):
    """The two (BH, P) fp32 halves of a state stored at ptr as (2, BH, P)."""
    offs = tl.arange(0, BH)[:, None] * P + tl.arange(0, P)[None, :]
    return tl.load(ptr + offs), tl.load(ptr + BH * P + offs)


@triton.jit
def _store_halves(ptr, h0, h1, BH: tl.constexpr, P: tl.constexpr):
    offs = tl.arange(0, BH)[:, None] * P + tl.arange(0, P)[None, :]
    tl.store(ptr + offs, h0)
    tl.store(ptr + BH * P + offs, h1)


@triton.jit
def _qk_parts(ptr, row, mr, Q: tl.constexpr, N: tl.constexpr, SPLIT: tl.constexpr):
    """One chunk's raw q or k columns (``row``: (rows, 1) offsets of the rows' N columns), as
    stored: the first and the second columns of the pairs j < Q (the rotated ones) and, with
    SPLIT, of the pairs Q ≤ j < 2Q (never rotated; without SPLIT the first two again, unused).
    0 past the end and on missing pairs."""
    j = tl.arange(0, Q)
    m = mr[:, None] & (j < N // 2)[None, :]
    a = tl.load(ptr + row + j[None, :], mask=m, other=0.0)
    b = tl.load(ptr + row + (N // 2 + j)[None, :], mask=m, other=0.0)
    if SPLIT:
        c = tl.load(ptr + row + (Q + j)[None, :], mask=m, other=0.0)
        d = tl.load(ptr + row + (N // 2 + Q + j)[None, :], mask=m, other=0.0)
        return a, b, c, d
    return a, b, a, b


@triton.jit
def _bias_parts(ptr, hi, T: tl.constexpr, R: tl.constexpr, Q: tl.constexpr, N: tl.constexpr,
                SPLIT: tl.constexpr):
    """Head hi's (R, N) bias as :func:`_qk_parts`' parts, fp32 (T·R, Q) each."""
    j = tl.arange(0, Q)
    base = ptr + ((hi * R + tl.arange(0, R)) * N)[:, None]
    m = (j < N // 2)[None, :]
    a = _rank_rows(tl.load(base + j[None, :], mask=m, other=0.0), T, R, Q)
    b = _rank_rows(tl.load(base + (N // 2 + j)[None, :], mask=m, other=0.0), T, R, Q)
    if SPLIT:
        c = _rank_rows(tl.load(base + (Q + j)[None, :], mask=m, other=0.0), T, R, Q)
        d = _rank_rows(tl.load(base + (N // 2 + Q + j)[None, :], mask=m, other=0.0), T, R, Q)
        return a, b, c, d
    return a, b, a, b


@triton.jit
def _turn_parts(a, b, c, d, ba, bb, bc, bd, cos, sin, SPLIT: tl.constexpr):
    """q̃ or k̃ from :func:`_qk_parts` and :func:`_bias_parts`: x + bias, the rotated pairs
    turned by (cos, sin) (T·R, Q), fp32."""
    a = a.to(tl.float32) + ba
    b = b.to(tl.float32) + bb
    ra = a * cos - b * sin
    rb = a * sin + b * cos
    if SPLIT:
        return ra, rb, c.to(tl.float32) + bc, d.to(tl.float32) + bd
    return ra, rb, ra, rb


@triton.jit
def _dots(a0, b0, a1, b1, a2, b2, a3, b3, acc, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """acc + a0·b0 + a1·b1 (+ a2·b2 + a3·b3 with SPLIT): a product over the state's columns as
    the sum of its parts'."""
    acc = tl.dot(a0, b0, acc, input_precision=PREC)
    acc = tl.dot(a1, b1, acc, input_precision=PREC)
    if SPLIT:
        acc = tl.dot(a2, b2, acc, input_precision=PREC)
        acc = tl.dot(a3, b3, acc, input_precision=PREC)
    return acc


@triton.jit
def _store_parts(ptr, a, b, c, d, BH: tl.constexpr, Q: tl.constexpr, P: tl.constexpr, SPLIT: tl.constexpr):
    """A state held as :func:`_qk_parts`' parts ((Q, P) each), stored as (2, BH, P) halves."""
    offs = tl.arange(0, Q)[:, None] * P + tl.arange(0, P)[None, :]
    tl.store(ptr + offs, a)
    tl.store(ptr + BH * P + offs, b)
    if SPLIT:
        tl.store(ptr + Q * P + offs, c)
        tl.store(ptr + (BH + Q) * P + offs, d)


@triton.jit
def _fwd_tiles(q_ptr, k_ptr, x_ptr, z_ptr, adt_ptr, w_ptr, g_ptr, ang_ptr, dt_ptr, bi, gi, hi, t, L, H, G, S,
               sxb, sxl, szb, szl, sab, sal, sah, sas, svb, svh, svl, swb, swh, swl,
               T: tl.constexpr, P: tl.constexpr, R: tl.constexpr, N: tl.constexpr, Q: tl.constexpr,
               SPLIT: tl.constexpr, HAS_Z: tl.constexpr, COMPUTE_Y: tl.constexpr, FUSED: tl.constexpr,
               GATES: tl.constexpr, REVERSE: tl.constexpr):
    """Every load of one chunk of :func:`_fwd` (steps t, 0 past the end; with REVERSE step t
    is the stored step L − 1 − t), as stored: q's and k's parts, x, z (per step), A·Δ, ω, γ
    (GATES: the gate at t and t + 1 and Δ at t + 1 instead, for :func:`_gates`), and the angles
    θ with Δ (FUSED) or φ. What a pass does not use is another tile again (never read)."""
    ROWS: tl.constexpr = T * R
    mt = t < L
    mr = _rows(mt, T, R)
    m = _stored(t, L, REVERSE)
    row = ((((bi * L + _rows(m, T, R)) * R + tl.arange(0, ROWS) % R) * G + gi) * N)[:, None]
    ka, kb, kc, kd = _qk_parts(k_ptr, row, mr, Q, N, SPLIT)
    qa, qb, qc, qd = ka, kb, kc, kd
    if COMPUTE_Y:
        qa, qb, qc, qd = _qk_parts(q_ptr, row, mr, Q, N, SPLIT)
    op = tl.arange(0, P)
    X = tl.load(x_ptr + bi * sxb + m[:, None] * sxl + hi * P + op[None, :], mask=mt[:, None], other=0.0)
    Z = X
    if HAS_Z and COMPUTE_Y:
        Z = tl.load(z_ptr + bi * szb + m[:, None] * szl + hi * P + op[None, :], mask=mt[:, None], other=0.0)
    base = bi * svb + hi * svh + m * svl
    a = tl.load(adt_ptr + base, mask=mt, other=0.0).to(tl.float32)
    d = a
    if FUSED:
        d = tl.load(dt_ptr + base, mask=mt, other=0.0).to(tl.float32)
    dn = d
    if GATES:  # the gate at t and t + 1 and Δ at t + 1 as loaded: :func:`_gates` makes ω, γ at their use
        nm = _stored(t + 1, L, REVERSE)
        mn = t + 1 < L
        w = tl.load(w_ptr + bi * swb + hi * swh + m * swl, mask=mt, other=0.0)
        g = tl.load(w_ptr + bi * swb + hi * swh + nm * swl, mask=mn, other=0.0)
        dn = tl.load(dt_ptr + bi * svb + hi * svh + nm * svl, mask=mn, other=0.0)
    else:
        w = tl.load(w_ptr + base, mask=mt, other=0.0)
        g = w
        if COMPUTE_Y:
            g = tl.load(g_ptr + base, mask=mt, other=0.0)
    j = tl.arange(0, Q)
    th = tl.load(ang_ptr + bi * sab + m[:, None] * sal + hi * sah + j[None, :] * sas,
                 mask=mt[:, None] & (j < S)[None, :], other=0.0)
    return qa, qb, qc, qd, ka, kb, kc, kd, X, Z, a, w, g, th, d, dn


@triton.jit
def _stored(t, L, REVERSE: tl.constexpr):
    """The stored step of the walk's step t: t, or L − 1 − t when the walk runs backwards."""
    if REVERSE:
        return L - 1 - t
    return t


@triton.jit
def _gates(trap, trap_next, d, d_next):
    """ω_t = λ_t Δ_t + (1 − λ_{t+1}) Δ_{t+1} and γ_t = λ_t Δ_t, λ = sigmoid(trap), from the gate
    and Δ at the walk's steps t and t + 1 (Δ_{t+1} 0 past the end: no second term at the last
    step). Made where they are used, not where their loads are issued: the loads of the next
    chunk are then waited for only in the next chunk."""
    lam = sigmoid(trap.to(tl.float32))
    g = lam * d
    return g + (1.0 - sigmoid(trap_next.to(tl.float32))) * d_next.to(tl.float32), g


@triton.autotune(configs=configs((4, 1), (8, 1), (4, 2)),
                 key=["H", "P", "N", "R", "T", "HAS_STATES", "COMPUTE_Y", "FUSED", "GATES"])
@triton.jit
def _fwd(
    q_ptr, k_ptr, x_ptr, adt_ptr, w_ptr, g_ptr, qb_ptr, kb_ptr, ang_ptr, dt_ptr, phi_ptr, D_ptr, z_ptr,
    mx_ptr, mz_ptr, mo_ptr, out_ptr, states_ptr,
    L, H, G, S, NC, sxb, sxl, szb, szl, sab, sal, sah, sas, svb, svh, svl, swb, swh, swl,
    P: tl.constexpr, N: tl.constexpr, BH: tl.constexpr, Q: tl.constexpr, R: tl.constexpr, T: tl.constexpr,
    SPLIT: tl.constexpr, MIMO: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_O: tl.constexpr,
    HAS_STATES: tl.constexpr, COMPUTE_Y: tl.constexpr, FUSED: tl.constexpr, STORE_PHI: tl.constexpr,
    GATES: tl.constexpr, REVERSE: tl.constexpr, DOT: tl.constexpr, STATE_DOT: tl.constexpr,
    PREC: tl.constexpr,
):
    """One (sequence, head) walks its chunks with the state in registers, each chunk's tiles
    loaded during the chunk before (:func:`_fwd_tiles`; the walk is latency bound, as the SSD
    forward's). COMPUTE_Y: the outputs; else (the backward's first pass) the state entering
    every chunk, stored as (2, BH, P) fp32 per chunk in ``states_ptr``. HAS_STATES False: one
    chunk, no state. FUSED: φ made here from θ (``ang_ptr``, strides sab.., a head stride 0
    for angles shared by the heads) and Δ (``dt_ptr``), as the running sum of π·tanh(θ)·Δ,
    and with STORE_PHI stored (``phi_ptr``, (b, l, h, s) fp32) for the backward; else φ is read
    (``ang_ptr``). SPLIT: the state's columns as the rotated pairs' parts and the unrotated
    ones' (Q = N/4 each, :func:`_qk_parts`), so that only the rotated (T, Q) angles are turned
    into cos, sin; else the two halves (Q = BH). x, z rows at strides sxl, szl (the (h, p)
    channels contiguous): slices of the layer's projection, not copies. STATE_DOT: the operand
    dtype of the state update (fp32 for the states the angles' gradient is made of, the input
    dtype when they only make y). A·Δ, Δ (and ω, γ) at strides svb, svh, svl; GATES (the outputs
    without a backward): ω, γ made here from Δ and the trapezoid gate (``w_ptr``, strides swb,
    swh, swl). REVERSE (the outputs without STORE_PHI): the sequences walked from their last step
    to their first, read and written at their own steps (no flipped copies)."""
    ROWS: tl.constexpr = T * R
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // H
    hi = pid % H
    gi = hi // (H // G)
    ot = tl.arange(0, T)
    op = tl.arange(0, P)
    oj = tl.arange(0, Q)
    orow = tl.arange(0, ROWS)
    Dh = tl.load(D_ptr + hi).to(tl.float32) if HAS_D else 0.0
    Ha = tl.zeros((Q, P), dtype=tl.float32)
    Hb = tl.zeros((Q, P), dtype=tl.float32)
    Hc = tl.zeros((Q, P), dtype=tl.float32)
    Hd = tl.zeros((Q, P), dtype=tl.float32)
    carry = tl.zeros((Q,), dtype=tl.float32)  # φ at the end of the chunks so far (FUSED)
    qa_n, qb_n, qc_n, qd_n, ka_n, kb_n, kc_n, kd_n, X_n, Z_n, a_n, w_n, g_n, th_n, d_n, dn_n = _fwd_tiles(
        q_ptr, k_ptr, x_ptr, z_ptr, adt_ptr, w_ptr, g_ptr, ang_ptr, dt_ptr, bi, gi, hi, ot, L, H, G, S,
        sxb, sxl, szb, szl, sab, sal, sah, sas, svb, svh, svl, swb, swh, swl, T, P, R, N, Q, SPLIT, HAS_Z,
        COMPUTE_Y, FUSED, GATES, REVERSE)
    for c in range(NC):
        t = c * T + ot
        mt = t < L
        tr = _rows(t, T, R)
        mr = _rows(mt, T, R)
        qa, qb, qc, qd, ka, kb, kc, kd = qa_n, qb_n, qc_n, qd_n, ka_n, kb_n, kc_n, kd_n
        X, Z, a, w, g, th, d, dn = X_n, Z_n, a_n, w_n, g_n, th_n, d_n, dn_n
        if HAS_STATES:
            (qa_n, qb_n, qc_n, qd_n, ka_n, kb_n, kc_n, kd_n, X_n, Z_n, a_n, w_n, g_n, th_n, d_n,
             dn_n) = _fwd_tiles(
                q_ptr, k_ptr, x_ptr, z_ptr, adt_ptr, w_ptr, g_ptr, ang_ptr, dt_ptr, bi, gi, hi, t + T, L, H,
                G, S, sxb, sxl, szb, szl, sab, sal, sah, sas, svb, svh, svl, swb, swh, swl, T, P, R, N, Q,
                SPLIT, HAS_Z, COMPUTE_Y, FUSED, GATES, REVERSE)
        V = _rows2(X.to(tl.float32), T, R, P)
        if MIMO:
            V = V * _rank_weight(mx_ptr, hi, T, P, R)
        if GATES:
            w, g = _gates(w, g, d, dn)
        cs = tl.cumsum(a, 0)
        cs_last = tl.sum(a, 0)
        cs_r = _rows(cs, T, R)
        w_r = _rows(w, T, R)
        phi = th
        if FUSED:
            inc = PI * tanh(th.to(tl.float32)) * d[:, None]
            phi = tl.cumsum(inc, 0) + carry[None, :]
            carry += tl.sum(inc, 0)
            if STORE_PHI:
                tl.store(phi_ptr + ((bi * L + t[:, None]) * H + hi) * S + oj[None, :], phi,
                         mask=mt[:, None] & (oj < S)[None, :])
        sin, cos = sincos(phi)
        cos = _rows2(cos, T, R, Q)
        sin = _rows2(sin, T, R, Q)
        # the biases are loaded where they are added (cached loads): held across the loop they
        # would take as many registers as the tiles
        kba, kbb, kbc, kbd = _bias_parts(kb_ptr, hi, T, R, Q, N, SPLIT)
        ka, kb, kc, kd = _turn_parts(ka, kb, kc, kd, kba, kbb, kbc, kbd, cos, sin, SPLIT)
        if not COMPUTE_Y:
            _store_parts(states_ptr + (pid * NC + c) * 2 * BH * P, Ha, Hb, Hc, Hd, BH, Q, P, SPLIT)
        else:
            qba, qbb, qbc, qbd = _bias_parts(qb_ptr, hi, T, R, Q, N, SPLIT)
            qa, qb, qc, qd = _turn_parts(qa, qb, qc, qd, qba, qbb, qbc, qbd, cos, sin, SPLIT)
            qa, qb, qc, qd = qa.to(DOT), qb.to(DOT), qc.to(DOT), qd.to(DOT)
            Sc = _dots(qa, tl.trans(ka.to(DOT)), qb, tl.trans(kb.to(DOT)), qc, tl.trans(kc.to(DOT)), qd,
                       tl.trans(kd.to(DOT)), tl.zeros((ROWS, ROWS), dtype=tl.float32), SPLIT, PREC)
            W, _ = _weights(cs_r, w_r, _rows(g, T, R), tr, False)
            y = tl.dot((Sc * W).to(DOT), V.to(DOT), input_precision=PREC) + Dh * V
            if HAS_STATES:
                y_in = _dots(qa, Ha.to(DOT), qb, Hb.to(DOT), qc, Hc.to(DOT), qd, Hd.to(DOT),
                             tl.zeros((ROWS, P), dtype=tl.float32), SPLIT, PREC)
                y += exp(cs_r)[:, None] * y_in
            if HAS_Z:
                zg = _rows2(Z.to(tl.float32), T, R, P)
                if MIMO:
                    zg = zg * _rank_weight(mz_ptr, hi, T, P, R)
                y = y * zg * sigmoid(zg)
            if HAS_O:
                out = _rank_sum(y * _rank_weight(mo_ptr, hi, T, P, R), T, R, P) if MIMO else y
                tl.store(out_ptr + ((bi * L + _stored(t, L, REVERSE)[:, None]) * H + hi) * P + op[None, :],
                         out.to(out_ptr.dtype.element_ty), mask=mt[:, None])
            else:
                m_r = _rows(_stored(t, L, REVERSE), T, R)
                rows = ((bi * L + m_r[:, None]) * R + (orow % R)[:, None]) * H + hi
                tl.store(out_ptr + rows * P + op[None, :], y.to(out_ptr.dtype.element_ty), mask=mr[:, None])
        if HAS_STATES:
            # H ← e^{S_last} H + Σ_s e^{S_last−S_s} ω_s k̃_s v_sᵀ, part by part
            u = (exp(tl.minimum(cs_last - cs_r, 0.0)) * w_r)[:, None]
            decay = exp(cs_last)
            Vs = V.to(STATE_DOT)
            Ha = tl.dot(tl.trans((ka * u).to(STATE_DOT)), Vs, decay * Ha, input_precision=PREC)
            Hb = tl.dot(tl.trans((kb * u).to(STATE_DOT)), Vs, decay * Hb, input_precision=PREC)
            if SPLIT:
                Hc = tl.dot(tl.trans((kc * u).to(STATE_DOT)), Vs, decay * Hc, input_precision=PREC)
                Hd = tl.dot(tl.trans((kd * u).to(STATE_DOT)), Vs, decay * Hd, input_precision=PREC)


@triton.autotune(configs=configs((4, 1), (8, 1)), key=["H", "P", "N", "R", "T"])
@triton.jit
def _state_grads(
    q_ptr, adt_ptr, qb_ptr, phi_ptr, z_ptr, mz_ptr, mo_ptr, dout_ptr, dstates_ptr,
    L, H, G, S, NC,
    P: tl.constexpr, N: tl.constexpr, BH: tl.constexpr, R: tl.constexpr, T: tl.constexpr,
    MIMO: tl.constexpr, HAS_Z: tl.constexpr, HAS_O: tl.constexpr, PREC: tl.constexpr,
):
    """Reverse pass of one (sequence, head): the gradient of the state leaving each chunk,
    (2, N/2, P) fp32 per chunk, dH_{c−1} = e^{S_last,c} dH_c + (e^{S} q̃_c)ᵀ dY_c (fp32 operands,
    as for the forward's states: see the module docstring)."""
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // H
    hi = pid % H
    gi = hi // (H // G)
    ot = tl.arange(0, T)
    i0, i1, mj = _halves(N, BH)
    dH0 = tl.zeros((BH, P), dtype=tl.float32)
    dH1 = tl.zeros((BH, P), dtype=tl.float32)
    for cc in range(NC):
        c = NC - 1 - cc
        _store_halves(dstates_ptr + (pid * NC + c) * 2 * BH * P, dH0, dH1, BH, P)
        if c > 0:
            t = c * T + ot
            mt = t < L
            a = tl.load(adt_ptr + (bi * H + hi) * L + t, mask=mt, other=0.0)
            ecs = exp(_rows(tl.cumsum(a, 0), T, R))
            zg, _, _ = _gate(z_ptr, mz_ptr, bi, hi, t, mt, L, H, T, P, R, HAS_Z, MIMO)
            _, _, dY = _out_grad(dout_ptr, mo_ptr, zg, bi, hi, t, mt, L, H, T, P, R, MIMO, HAS_Z, HAS_O)
            cos, sin = _turns(phi_ptr, bi, hi, t, mt, L, H, S, T, R, BH)
            q0, q1 = _rotated(q_ptr, qb_ptr, bi, gi, hi, t, mt, L, G, i0, i1, mj, cos, sin, T, R, N, BH)
            decay = exp(tl.sum(a, 0))
            dH0 = tl.dot(tl.trans(q0 * ecs[:, None]), dY, decay * dH0, input_precision=PREC)
            dH1 = tl.dot(tl.trans(q1 * ecs[:, None]), dY, decay * dH1, input_precision=PREC)


@triton.jit
def _store_rotated(x_ptr, bias_ptr, out_ptr, lo_ptr, bi, gi, hi, t, mt, L, H, G, i0, i1, mj, cos, sin,
                   T: tl.constexpr, R: tl.constexpr, N: tl.constexpr, BH: tl.constexpr, LOW: tl.constexpr,
                   SPLIT: tl.constexpr):
    """:func:`_rotate`'s work for one of q, k."""
    x0, x1 = _rotated(x_ptr, bias_ptr, bi, gi, hi, t, mt, L, G, i0, i1, mj, cos, sin, T, R, N, BH)
    x0, x0l = _split(x0, LOW, tl.float32)
    x1, x1l = _split(x1, LOW, tl.float32)
    _store_head_halves(out_ptr, x0, x1, bi, hi, t, mt, L, H, i0, i1, mj, T, R, N)
    if SPLIT:
        _store_head_halves(lo_ptr, x0l, x1l, bi, hi, t, mt, L, H, i0, i1, mj, T, R, N)


@triton.autotune(configs=configs((4, 1), (8, 1)), key=["H", "N", "R", "T", "SPLIT"])
@triton.jit
def _rotate(q_ptr, k_ptr, qb_ptr, kb_ptr, phi_ptr, qr_ptr, kr_ptr, qrl_ptr, krl_ptr, L, H, G, S, NB,
            N: tl.constexpr, BH: tl.constexpr, R: tl.constexpr, T: tl.constexpr, LOW: tl.constexpr,
            SPLIT: tl.constexpr):
    """One (sequence, head, block of T steps): the head's rotated q̃ and k̃, R(φ)·(x + bias),
    rounded to LOW and stored per head ((b, l, r, h, n), their pointers' dtype) for
    :func:`_chunk_bwd_v` and :func:`_chunk_bwd_qk`, which take them as dot operands only: in
    the dot dtype they are what those kernels would round in registers, and their programs hold
    no cos/sin and no fp32 copies. SPLIT: also the remainders, rounded alike (``qrl_ptr``,
    ``krl_ptr``; :func:`_split`), for the products that need more than LOW's precision."""
    pid = tl.program_id(0).to(tl.int64)
    blk = pid % NB
    bh = pid // NB
    bi = bh // H
    hi = bh % H
    gi = hi // (H // G)
    t = blk * T + tl.arange(0, T)
    mt = t < L
    i0, i1, mj = _halves(N, BH)
    cos, sin = _turns(phi_ptr, bi, hi, t, mt, L, H, S, T, R, BH)
    _store_rotated(q_ptr, qb_ptr, qr_ptr, qrl_ptr, bi, gi, hi, t, mt, L, H, G, i0, i1, mj, cos, sin,
                   T, R, N, BH, LOW, SPLIT)
    _store_rotated(k_ptr, kb_ptr, kr_ptr, krl_ptr, bi, gi, hi, t, mt, L, H, G, i0, i1, mj, cos, sin,
                   T, R, N, BH, LOW, SPLIT)


@triton.autotune(configs=V_CONFIGS, key=["H", "P", "N", "R", "T", "HAS_STATES", "PART"])
@triton.jit
def _chunk_bwd_v(
    qr_ptr, kr_ptr, x_ptr, adt_ptr, w_ptr, g_ptr, D_ptr, z_ptr,
    mx_ptr, mz_ptr, mo_ptr, dout_ptr, states_ptr, dstates_ptr,
    dx_ptr, dz_ptr, dadt_ptr, dw_ptr, dg_ptr, sdadt_ptr, sdw_ptr, part_ptr,
    L, H, NC, NPART,
    P: tl.constexpr, N: tl.constexpr, BH: tl.constexpr, R: tl.constexpr, T: tl.constexpr,
    MIMO: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_O: tl.constexpr,
    HAS_STATES: tl.constexpr, PART: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """One (sequence, head, chunk) of the value side's gradients, from the head's rotated q̃, k̃
    of :func:`_rotate` (in the dot dtype: no rotation here), in two launches that share no
    product (each makes one orientation of q̃·k̃ᵀ ⊙ W), so that each holds about half of what
    one program holding both did (docs/benchmarks.md):

    * PART_VX: dx, and with HAS_STATES what reaches A·Δ and ω through the chunk's states (the
      leaving state's gradient dH: k̃·dH, ⟨dH, H⟩) into ``sdadt_ptr``, ``sdw_ptr`` ((b, h, l));
    * PART_VS: the pre-gate y (recomputed), dz, and the gradients of A·Δ, ω and γ inside the
      chunk and through the entering state H (e^{S} q̃·H), plus PART_VX's share: dadt, dω, dγ.

    With HAS_STATES the entering state and the leaving state's gradient come from the serial
    passes. ``part_ptr`` receives per (sequence, chunk, head) partial sums, NPART floats: dD
    (1), then for MIMO d mimo_x (PART_VX), d mimo_z, d mimo_o (PART_VS) (R·P each)."""
    pid = tl.program_id(0).to(tl.int64)
    c = pid % NC
    bh = pid // NC
    bi = bh // H
    hi = bh % H
    ot = tl.arange(0, T)
    op = tl.arange(0, P)
    orn = tl.arange(0, R)
    t = c * T + ot
    mt = t < L
    tr = _rows(t, T, R)
    i0, i1, mj = _halves(N, BH)
    V, X, MX = _values(x_ptr, mx_ptr, bi, hi, t, mt, L, H, T, P, R, MIMO)
    Vd = V.to(DOT)
    cs, cs_last, w, g = _decays(adt_ptr, w_ptr, g_ptr, bi, hi, t, mt, L, H)
    cs_r = _rows(cs, T, R)
    w_r = _rows(w, T, R)
    g_r = _rows(g, T, R)
    Dh = tl.load(D_ptr + hi).to(tl.float32) if HAS_D else 0.0
    q0d, q1d = _head_halves(qr_ptr, bi, hi, t, mt, L, H, i0, i1, mj, T, R, N)
    k0d, k1d = _head_halves(kr_ptr, bi, hi, t, mt, L, H, i0, i1, mj, T, R, N)
    pbase = ((bi * NC + c) * H + hi) * NPART
    bhl = (bi * H + hi) * L + t
    if PART == PART_VX:
        ScT = tl.dot(k0d, tl.trans(q0d), input_precision=PREC)
        ScT = tl.dot(k1d, tl.trans(q1d), ScT, input_precision=PREC)
        WT, _ = _weights(cs_r, w_r, g_r, tr, True)
        zg, _, _ = _gate(z_ptr, mz_ptr, bi, hi, t, mt, L, H, T, P, R, HAS_Z, MIMO)
        _, _, dY = _out_grad(dout_ptr, mo_ptr, zg, bi, hi, t, mt, L, H, T, P, R, MIMO, HAS_Z, HAS_O)
        dV = tl.dot((ScT * WT).to(DOT), dY.to(DOT), input_precision=PREC) + Dh * dY
        if HAS_STATES:
            # the leaving state e^{S_last} H + Σ_s e^{S_last−S_s} ω_s k̃_s v_sᵀ
            sidx = (bh * NC + c) * 2 * BH * P
            dH0, dH1 = _state_halves(dstates_ptr + sidx, BH, P)
            H0, H1 = _state_halves(states_ptr + sidx, BH, P)
            hdh = tl.sum(tl.sum(dH0 * H0, 1), 0) + tl.sum(tl.sum(dH1 * H1, 1), 0)
            KdH = tl.dot(k0d, dH0.to(DOT), input_precision=PREC)
            KdH = tl.dot(k1d, dH1.to(DOT), KdH, input_precision=PREC)
            u_dec = exp(tl.minimum(cs_last - cs_r, 0.0))
            u = u_dec * w_r
            dV += u[:, None] * KdH
            du = tl.sum(V * KdH, 1)
            dcs_last = tl.sum(du * u, 0) + exp(cs_last) * hdh
            tl.store(sdadt_ptr + bhl, cumsum_grad(tl.sum(tl.reshape(-du * u, (T, R)), 1), dcs_last), mask=mt)
            tl.store(sdw_ptr + bhl, tl.sum(tl.reshape(du * u_dec, (T, R)), 1), mask=mt)
        if MIMO:  # v = x ⊙ mimo_x
            tl.store(dx_ptr + ((bi * L + t[:, None]) * H + hi) * P + op[None, :],
                     _rank_sum(dV * MX, T, R, P), mask=mt[:, None])
            tl.store(part_ptr + pbase + 1 + orn[:, None] * P + op[None, :],
                     _step_sum(dV * X, T, R, P))
        else:
            tl.store(dx_ptr + ((bi * L + t[:, None]) * H + hi) * P + op[None, :], dV, mask=mt[:, None])
    else:
        Sc = tl.dot(q0d, tl.trans(k0d), input_precision=PREC)
        Sc = tl.dot(q1d, tl.trans(k1d), Sc, input_precision=PREC)
        W, E = _weights(cs_r, w_r, g_r, tr, False)
        y = tl.dot((Sc * W).to(DOT), Vd, input_precision=PREC) + Dh * V  # the pre-gate y, recomputed
        if HAS_STATES:
            H0, H1 = _state_halves(states_ptr + (bh * NC + c) * 2 * BH * P, BH, P)
            y_in = tl.dot(q0d, H0.to(DOT), input_precision=PREC)
            y_in = exp(cs_r)[:, None] * tl.dot(q1d, H1.to(DOT), y_in, input_precision=PREC)  # e^{S_t} q̃·H
            y += y_in
        # dY only now: its loads and tiles are not held across the products above
        zg, z, MZ = _gate(z_ptr, mz_ptr, bi, hi, t, mt, L, H, T, P, R, HAS_Z, MIMO)
        do, mo, dY = _out_grad(dout_ptr, mo_ptr, zg, bi, hi, t, mt, L, H, T, P, R, MIMO, HAS_Z, HAS_O)
        if HAS_Z:
            sg = sigmoid(zg)
            dzg = do * mo * y * sg * (1 + zg * (1 - sg))
            if MIMO:
                tl.store(dz_ptr + ((bi * L + t[:, None]) * H + hi) * P + op[None, :],
                         _rank_sum(dzg * MZ, T, R, P), mask=mt[:, None])
                tl.store(part_ptr + pbase + 1 + R * P + orn[:, None] * P + op[None, :],
                         _step_sum(dzg * z, T, R, P))
            else:
                tl.store(dz_ptr + ((bi * L + t[:, None]) * H + hi) * P + op[None, :], dzg, mask=mt[:, None])
        if MIMO and HAS_O:
            gate = zg * sigmoid(zg) if HAS_Z else 1.0
            tl.store(part_ptr + pbase + 1 + 2 * R * P + orn[:, None] * P + op[None, :],
                     _step_sum(do * y * gate, T, R, P))
        if HAS_D:
            tl.store(part_ptr + pbase, tl.sum(tl.sum(dY * V, 1), 0))
        # the weights' gradient dW = (q̃·k̃ᵀ) ⊙ (dY·vᵀ), to S (both sides of each entry), ω and γ
        dW = Sc * tl.dot(dY.to(DOT), tl.trans(Vd), input_precision=PREC)
        dWE = dW * E
        dWW = dWE * w_r[None, :]
        dcs_r = tl.sum(dWW, 1) - tl.sum(dWW, 0)
        dw_r = tl.sum(dWE, 0)
        dg_r = tl.sum(tl.where(tr[:, None] == tr[None, :], dW, 0.0), 1)
        if HAS_STATES:
            dcs_r += tl.sum(dY * y_in, 1)
        dadt = cumsum_grad(tl.sum(tl.reshape(dcs_r, (T, R)), 1), 0.0)
        dw = tl.sum(tl.reshape(dw_r, (T, R)), 1)
        if HAS_STATES:  # PART_VX's share, through the leaving state
            dadt += tl.load(sdadt_ptr + bhl, mask=mt, other=0.0)
            dw += tl.load(sdw_ptr + bhl, mask=mt, other=0.0)
        tl.store(dadt_ptr + bhl, dadt, mask=mt)
        tl.store(dw_ptr + bhl, dw, mask=mt)
        tl.store(dg_ptr + bhl, tl.sum(tl.reshape(dg_r, (T, R)), 1), mask=mt)


@triton.jit
def _other_side(hi_ptr, lo_ptr, bi, hi, t, mt, L, H, i0, i1, mj, T: tl.constexpr, R: tl.constexpr,
                N: tl.constexpr, SPLIT: tl.constexpr):
    """:func:`_rotate`'s halves of one side and, with SPLIT, their remainders (else the halves
    again, never used)."""
    x0, x1 = _head_halves(hi_ptr, bi, hi, t, mt, L, H, i0, i1, mj, T, R, N)
    if SPLIT:
        l0, l1 = _head_halves(lo_ptr, bi, hi, t, mt, L, H, i0, i1, mj, T, R, N)
    else:
        l0, l1 = x0, x1
    return x0, x1, l0, l1


@triton.autotune(configs=configs((4, 1), (8, 1)),
                 key=["H", "P", "N", "R", "T", "HAS_STATES", "PART", "SPLIT"])
@triton.jit
def _chunk_bwd_qk(
    qr_ptr, kr_ptr, qrl_ptr, krl_ptr, x_ptr, adt_ptr, w_ptr, g_ptr, z_ptr,
    mx_ptr, mz_ptr, mo_ptr, dout_ptr, st_ptr, dd_ptr,
    L, H, NC,
    P: tl.constexpr, N: tl.constexpr, BH: tl.constexpr, R: tl.constexpr, T: tl.constexpr,
    MIMO: tl.constexpr, HAS_Z: tl.constexpr, HAS_O: tl.constexpr, HAS_STATES: tl.constexpr,
    PART: tl.constexpr, DOT: tl.constexpr, LOW: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr,
):
    """One (sequence, head, chunk): the head's dq̃ (PART_DQ) or dk̃ (PART_DK) of the chunk's
    rows, in the rotated frame, stored per head as its two halves (fp32 (b, l, r, h, n)); the
    turning back, dφ and the group's head sum are :func:`_turn_back`'s. The two are one
    computation with the roles swapped:

        dq̃ = (dY·vᵀ ⊙ W)·k̃ + e^{S} dY·Hᵀ          (st_ptr: the entering states H)
        dk̃ = (v·dYᵀ ⊙ Wᵀ)·q̃ + e^{S_last−S} ω v·dHᵀ (st_ptr: the leaving states' gradients dH)

    The other side (k̃ for dq̃, q̃ for dk̃) comes rotated from :func:`_rotate`, so a program holds
    no cos/sin and no accumulator over heads. With 16-bit inputs (SPLIT) every product runs on
    split operands (:func:`_split_dot`: three 16-bit dots, about 16 significant bits, more than
    tf32's 11): dφ, made of these gradients, needs more than bf16 operands (module docstring)."""
    pid = tl.program_id(0).to(tl.int64)
    c = pid % NC
    bh = pid // NC
    bi = bh // H
    hi = bh % H
    ot = tl.arange(0, T)
    t = c * T + ot
    mt = t < L
    tr = _rows(t, T, R)
    i0, i1, mj = _halves(N, BH)
    if PART == PART_DQ:
        o0, o1, l0, l1 = _other_side(kr_ptr, krl_ptr, bi, hi, t, mt, L, H, i0, i1, mj, T, R, N, SPLIT)
    else:
        o0, o1, l0, l1 = _other_side(qr_ptr, qrl_ptr, bi, hi, t, mt, L, H, i0, i1, mj, T, R, N, SPLIT)
    V, _, _ = _values(x_ptr, mx_ptr, bi, hi, t, mt, L, H, T, P, R, MIMO)
    zg, _, _ = _gate(z_ptr, mz_ptr, bi, hi, t, mt, L, H, T, P, R, HAS_Z, MIMO)
    _, _, dY = _out_grad(dout_ptr, mo_ptr, zg, bi, hi, t, mt, L, H, T, P, R, MIMO, HAS_Z, HAS_O)
    V, V_lo = _split(V, LOW, DOT)
    dY, dY_lo = _split(dY, LOW, DOT)
    cs, cs_last, w, g = _decays(adt_ptr, w_ptr, g_ptr, bi, hi, t, mt, L, H)
    cs_r = _rows(cs, T, R)
    w_r = _rows(w, T, R)
    zero = tl.zeros((T * R, T * R), dtype=tl.float32)
    if PART == PART_DQ:
        W, _ = _weights(cs_r, w_r, _rows(g, T, R), tr, False)
        M = _split_dot(dY, dY_lo, tl.trans(V), tl.trans(V_lo), zero, SPLIT, PREC) * W
        lhs, lhs_lo = dY, dY_lo
        scale = exp(cs_r)
    else:
        WT, _ = _weights(cs_r, w_r, _rows(g, T, R), tr, True)
        M = _split_dot(V, V_lo, tl.trans(dY), tl.trans(dY_lo), zero, SPLIT, PREC) * WT
        lhs, lhs_lo = V, V_lo
        scale = exp(tl.minimum(cs_last - cs_r, 0.0)) * w_r
    M, M_lo = _split(M, LOW, DOT)
    acc = tl.zeros((T * R, BH), dtype=tl.float32)
    d0 = _split_dot(M, M_lo, o0.to(DOT), l0.to(DOT), acc, SPLIT, PREC)
    d1 = _split_dot(M, M_lo, o1.to(DOT), l1.to(DOT), acc, SPLIT, PREC)
    if HAS_STATES:
        S0, S1 = _state_halves(st_ptr + ((bi * H + hi) * NC + c) * 2 * BH * P, BH, P)
        S0, S0_lo = _split(S0, LOW, DOT)
        S1, S1_lo = _split(S1, LOW, DOT)
        d0 += scale[:, None] * _split_dot(lhs, lhs_lo, tl.trans(S0), tl.trans(S0_lo), acc, SPLIT, PREC)
        d1 += scale[:, None] * _split_dot(lhs, lhs_lo, tl.trans(S1), tl.trans(S1_lo), acc, SPLIT, PREC)
    _store_head_halves(dd_ptr, d0, d1, bi, hi, t, mt, L, H, i0, i1, mj, T, R, N)


@triton.jit
def _turn_tiles(phi_ptr, ddq_ptr, ddk_ptr, bi, hi, t, mt, more, L, H, S, T: tl.constexpr, R: tl.constexpr,
                N: tl.constexpr, QR: tl.constexpr, QU: tl.constexpr, HAS_U: tl.constexpr):
    """Every load of head hi in :func:`_turn_back` (none where ``more`` is false: past the group's
    last head): φ of the rotated pairs (T, QR), and the head's dq̃, dk̃ (rotated frame, (b, l, r, h, n))
    as the two halves of the rotated pairs j < QR (T·R, QR each) and, with HAS_U, of the unrotated
    pairs QR ≤ j < N/2 (T·R, QU each; else the rotated ones again, never used). 0 past the end."""
    ROWS: tl.constexpr = T * R
    row = ((((bi * L + _rows(t, T, R)) * R + tl.arange(0, ROWS) % R) * H + hi) * N)[:, None]
    mr = _rows(mt, T, R)[:, None] & more
    jr = tl.arange(0, QR)
    phi = tl.load(phi_ptr + ((bi * L + t[:, None]) * H + hi) * S + jr[None, :],
                  mask=(mt[:, None] & more) & (jr < S)[None, :], other=0.0)
    m = mr & (jr < N // 2)[None, :]
    q0 = tl.load(ddq_ptr + row + jr[None, :], mask=m, other=0.0)
    q1 = tl.load(ddq_ptr + row + (N // 2 + jr)[None, :], mask=m, other=0.0)
    k0 = tl.load(ddk_ptr + row + jr[None, :], mask=m, other=0.0)
    k1 = tl.load(ddk_ptr + row + (N // 2 + jr)[None, :], mask=m, other=0.0)
    if HAS_U:
        ju = QR + tl.arange(0, QU)
        mu = mr & (ju < N // 2)[None, :]
        uq0 = tl.load(ddq_ptr + row + ju[None, :], mask=mu, other=0.0)
        uq1 = tl.load(ddq_ptr + row + (N // 2 + ju)[None, :], mask=mu, other=0.0)
        uk0 = tl.load(ddk_ptr + row + ju[None, :], mask=mu, other=0.0)
        uk1 = tl.load(ddk_ptr + row + (N // 2 + ju)[None, :], mask=mu, other=0.0)
    else:  # one return for both: the compiler checks every return's types, (T·R, QU) ≠ (T·R, QR)
        uq0, uq1, uk0, uk1 = q0, q1, k0, k1
    return phi, q0, q1, k0, k1, uq0, uq1, uk0, uk1


@triton.jit
def _turned(x0, x1, bias_ptr, hi, d0, d1, cos, sin, T: tl.constexpr, R: tl.constexpr, N: tl.constexpr,
            QR: tl.constexpr):
    """Head hi's dq̃ or dk̃ on the rotated pairs (d0, d1: the pairs' halves, rotated frame) turned
    back to the unrotated frame, g = R(φ)ᵀ d, and its share of dφ per step. With x = x_raw + bias
    (x0, x1: the group's raw q or k) and x̃ = R(φ) x: dφ = x̃₀ d₁ − x̃₁ d₀ = x₀ g₁ − x₁ g₀, with
    (g₀, g₁) = (d₀ cos + d₁ sin, d₁ cos − d₀ sin): x̃ itself is never made."""
    j = tl.arange(0, QR)
    m = (j < N // 2)[None, :]
    base = bias_ptr + ((hi * R + tl.arange(0, R)) * N)[:, None]  # (R, 1): the head's rows
    b0 = _rank_rows(tl.load(base + j[None, :], mask=m, other=0.0), T, R, QR)
    b1 = _rank_rows(tl.load(base + (N // 2 + j)[None, :], mask=m, other=0.0), T, R, QR)
    g0 = d0 * cos + d1 * sin
    g1 = d1 * cos - d0 * sin
    return g0, g1, _rank_sum((x0 + b0) * g1 - (x1 + b1) * g0, T, R, QR)


@triton.jit
def _store_bias_sums(ptr, g0, g1, cols, mc, T: tl.constexpr, R: tl.constexpr, N: tl.constexpr,
                     C: tl.constexpr):
    """The step sums (R, C) of the two halves (T·R, C) of one head's gradient at columns ``cols``
    and N/2 + ``cols`` of its (R, N) bias partials at ``ptr``."""
    base = ptr + (tl.arange(0, R) * N)[:, None]
    tl.store(base + cols[None, :], _step_sum(g0, T, R, C), mask=mc[None, :])
    tl.store(base + (N // 2 + cols)[None, :], _step_sum(g1, T, R, C), mask=mc[None, :])


@triton.jit
def _store_group(ptr, x0, x1, row, mr, cols, mc, N: tl.constexpr):
    """The group's gradient's two halves (rows, C) at columns ``cols`` and N/2 + ``cols`` of the
    rows ``row`` ((rows, 1) offsets of their N columns; ``mr`` (rows, 1) and ``mc`` (C,) masks)."""
    m = mr & mc[None, :]
    tl.store(ptr + row + cols[None, :], x0, mask=m)
    tl.store(ptr + row + (N // 2 + cols)[None, :], x1, mask=m)


@triton.autotune(configs=configs((4, 1), (8, 1)), key=["HG", "N", "R", "T", "QR", "QU"])
@triton.jit
def _turn_back(
    q_ptr, k_ptr, qb_ptr, kb_ptr, phi_ptr, ddq_ptr, ddk_ptr, dq_ptr, dk_ptr, dphi_ptr, dbias_ptr,
    L, H, G, S, NB,
    HG: tl.constexpr, N: tl.constexpr, R: tl.constexpr, T: tl.constexpr, QR: tl.constexpr, QU: tl.constexpr,
    HAS_U: tl.constexpr,
):
    """One (sequence, group, block of T steps): every head's dq̃, dk̃ of :func:`_chunk_bwd_qk`
    turned back by its angles and summed over the group's HG heads (which share q and k) into
    dq, dk; each head's dφ (from both) and its bias gradients summed over the block
    (``dbias_ptr``: (b, NB, h, 2, R, N), d q_bias then d k_bias). No products: a pass over
    memory in fp32, in blocks of its own (:data:`TURN_BACK_ROWS` rows).

    Only the rotated pairs j < QR (QR ≥ S, :func:`turn_back_parts`) are turned, their sin/cos made
    and the group's raw q, k read (once, for every head); the unrotated pairs QR ≤ j < N/2 (HAS_U,
    tiles of QU) pass through: their gradients are dq̃, dk̃ themselves, summed. Each head's
    tiles are loaded during the head before (:func:`_turn_tiles`)."""
    ROWS: tl.constexpr = T * R
    pid = tl.program_id(0).to(tl.int64)
    blk = pid % NB
    bg = pid // NB
    bi = bg // G
    gi = bg % G
    t = blk * T + tl.arange(0, T)
    mt = t < L
    jr = tl.arange(0, QR)
    mjr = jr < N // 2
    ju = QR + tl.arange(0, QU)
    mju = ju < N // 2
    row = ((((bi * L + _rows(t, T, R)) * R + tl.arange(0, ROWS) % R) * G + gi) * N)[:, None]
    mr = _rows(mt, T, R)[:, None]
    m = mr & mjr[None, :]
    # the group's raw q, k on the rotated pairs, shared by its heads
    xq0 = tl.load(q_ptr + row + jr[None, :], mask=m, other=0.0).to(tl.float32)
    xq1 = tl.load(q_ptr + row + (N // 2 + jr)[None, :], mask=m, other=0.0).to(tl.float32)
    xk0 = tl.load(k_ptr + row + jr[None, :], mask=m, other=0.0).to(tl.float32)
    xk1 = tl.load(k_ptr + row + (N // 2 + jr)[None, :], mask=m, other=0.0).to(tl.float32)
    aq0 = tl.zeros((ROWS, QR), dtype=tl.float32)
    aq1 = tl.zeros((ROWS, QR), dtype=tl.float32)
    ak0 = tl.zeros((ROWS, QR), dtype=tl.float32)
    ak1 = tl.zeros((ROWS, QR), dtype=tl.float32)
    uq0 = tl.zeros((ROWS, QU), dtype=tl.float32)
    uq1 = tl.zeros((ROWS, QU), dtype=tl.float32)
    uk0 = tl.zeros((ROWS, QU), dtype=tl.float32)
    uk1 = tl.zeros((ROWS, QU), dtype=tl.float32)
    nxt = _turn_tiles(phi_ptr, ddq_ptr, ddk_ptr, bi, gi * HG, t, mt, True, L, H, S, T, R, N, QR, QU, HAS_U)
    for hh in range(HG):
        hi = gi * HG + hh
        phi, dq0, dq1, dk0, dk1, eq0, eq1, ek0, ek1 = nxt
        nxt = _turn_tiles(phi_ptr, ddq_ptr, ddk_ptr, bi, hi + 1, t, mt, hh + 1 < HG, L, H, S, T, R, N, QR, QU,
                          HAS_U)
        sin, cos = sincos(phi)
        cos = _rows2(cos, T, R, QR)
        sin = _rows2(sin, T, R, QR)
        gq0, gq1, dphi_q = _turned(xq0, xq1, qb_ptr, hi, dq0, dq1, cos, sin, T, R, N, QR)
        gk0, gk1, dphi_k = _turned(xk0, xk1, kb_ptr, hi, dk0, dk1, cos, sin, T, R, N, QR)
        tl.store(dphi_ptr + ((bi * L + t[:, None]) * H + hi) * S + jr[None, :], dphi_q + dphi_k,
                 mask=mt[:, None] & (jr < S)[None, :])
        pq = dbias_ptr + ((bi * NB + blk) * H + hi) * 2 * R * N
        _store_bias_sums(pq, gq0, gq1, jr, mjr, T, R, N, QR)
        _store_bias_sums(pq + R * N, gk0, gk1, jr, mjr, T, R, N, QR)
        aq0 += gq0
        aq1 += gq1
        ak0 += gk0
        ak1 += gk1
        if HAS_U:
            _store_bias_sums(pq, eq0, eq1, ju, mju, T, R, N, QU)
            _store_bias_sums(pq + R * N, ek0, ek1, ju, mju, T, R, N, QU)
            uq0 += eq0
            uq1 += eq1
            uk0 += ek0
            uk1 += ek1
    _store_group(dq_ptr, aq0, aq1, row, mr, jr, mjr, N)
    _store_group(dk_ptr, ak0, ak1, row, mr, jr, mjr, N)
    if HAS_U:
        _store_group(dq_ptr, uq0, uq1, row, mr, ju, mju, N)
        _store_group(dk_ptr, uk0, uk1, row, mr, ju, mju, N)


def chunk_steps(rank: int, dtype: torch.dtype, chunk_size: int | None = None) -> int:
    """Steps per chunk: the largest power of two ≤ ``chunk_size`` (default: all that fit) whose
    rows fit a tile, at most 64 rows of rank R (32 for fp32, whose dot operands take twice the
    shared memory) and at least 16 (the smallest dot)."""
    most = (CHUNK_ROWS if dtype != torch.float32 else CHUNK_ROWS // 2) // rank
    if chunk_size is None:
        return most
    return min(most, max(1 << (chunk_size.bit_length() - 1), 16 // rank, 1))


def half_block(n: int) -> int:
    """Width of the kernels' tiles of one half of the rotation pairs: n/2, at least 16 (the
    smallest dot; the pairs past n/2 are masked)."""
    return max(16, n // 2)


def rotation_parts(n: int, s: int) -> tuple[int, bool]:
    """Width Q of the forward's tiles of q̃, k̃ columns, and whether they are split (SPLIT): the
    rotated pairs j < Q apart from the unrotated Q ≤ j < N/2, Q = N/4 (when the S rotated pairs
    fit a quarter and it is a dot's width: cos and sin of the angles' own columns only), or
    the halves (Q = :func:`half_block`)."""
    if n >= 64 and triton.next_power_of_2(s) <= n // 4:
        return n // 4, True
    return half_block(n), False


def channel_rows(x: torch.Tensor) -> torch.Tensor:
    """x (b, l, h, p) itself when its (h, p) channels are contiguous (a slice of a projection's
    output: the forward reads its rows at their stride), else a contiguous copy."""
    p = x.shape[-1]
    return x if x.stride(-1) == 1 and x.stride(-2) == p else x.contiguous()


def _forward(q, k, v, adt, omega, gamma, q_bias, k_bias, angles, delta, D, z, mimo_x, mimo_z, mimo_o,
             chunk_size, store_phi, gates=False, reverse=False):
    """The output pass (:func:`_fwd`): the scan's output, and φ ((b, l, h, s) fp32) with
    ``store_phi``, else None. Layouts as :class:`Mamba3Scan` takes them; with ``gates`` ``omega``
    is the trapezoid gate (pre-sigmoid) and ``gamma`` unused, and A·Δ, Δ and the gate are read at
    their strides, in any float dtype; ``reverse`` (not with ``store_phi``): the reversed sequences'
    scan, in their own order."""
    b, length, r, g, n = q.shape
    h, p = v.shape[2:]
    s = angles.shape[-1]
    mimo = mimo_x is not None
    T = chunk_steps(r, v.dtype, chunk_size)
    has_o = mimo_o is not None or not mimo
    # the forward's chunks: the whole sequence if it fits one, else at most FWD_ROWS rows
    fwd_steps = T if length <= T else min(T, FWD_ROWS // r)
    fwd_chunks = triton.cdiv(length, fwd_steps)
    out = v.new_empty((b, length, h, p) if has_o else (b, length, r, h, p))
    dummy = adt  # any tensor: pointer of an absent optional input (never read)
    zz = z if z is not None else v
    phi = torch.empty((b, length, h, s), dtype=torch.float32, device=v.device) if store_phi else dummy
    Q, split = rotation_parts(n, s)
    launch(_fwd, (b * h,), q, k, v, adt, omega, gamma, q_bias, k_bias, angles, delta, phi,
           *_optional(D, z, mimo_x, mimo_z, mimo_o, dummy), out, dummy, length, h, g, s, fwd_chunks,
           v.stride(0), v.stride(1), zz.stride(0), zz.stride(1), *angles.stride(), *_steps(adt, delta),
           *omega.stride(), HAS_D=D is not None, HAS_STATES=fwd_chunks > 1, COMPUTE_Y=True, FUSED=True,
           STORE_PHI=store_phi, GATES=gates, REVERSE=reverse, DOT=dot_dtype(v.dtype),
           STATE_DOT=dot_dtype(v.dtype), Q=Q, SPLIT=split, **_meta(q, v, mimo_x, mimo_o, z, fwd_steps))
    return out, phi if store_phi else None


def _meta(q: torch.Tensor, v: torch.Tensor, mimo_x, mimo_o, z, T: int) -> dict:
    """The constexprs every kernel takes."""
    mimo = mimo_x is not None
    return dict(P=v.shape[-1], N=q.shape[-1], BH=half_block(q.shape[-1]), R=q.shape[2], T=T, MIMO=mimo,
                HAS_Z=z is not None, HAS_O=mimo_o is not None or not mimo, PREC="tf32")


def _optional(D, z, mimo_x, mimo_z, mimo_o, dummy) -> tuple[torch.Tensor, ...]:
    """The optional inputs, ``dummy`` (never read) for the absent ones."""
    return tuple(dummy if t is None else t for t in (D, z, mimo_x, mimo_z, mimo_o))


def _steps(adt: torch.Tensor, delta: torch.Tensor) -> tuple[int, int, int]:
    """The (b, h, l) strides :func:`_fwd` reads A·Δ and Δ at (one set: they must agree)."""
    if adt.stride() != delta.stride():
        raise ValueError(f"A·Δ and Δ at different strides: {adt.stride()}, {delta.stride()}")
    return adt.stride()


class Mamba3Scan(torch.autograd.Function):
    """The kernels on prepared inputs: q, k (b, l, r, g, n); v, z (b, l, h, p), (h, p) contiguous;
    adt, ω, γ, Δ (b, h, l) fp32 contiguous; biases (h, r, n) fp32; the angles θ (b, l, h, s) at
    any strides; D (h); mimo_* (h, r, p) fp32 or None. ``store_phi``: a backward will follow (the
    forward keeps φ, (b, l, h, s) fp32, for it)."""

    @staticmethod
    def forward(ctx, q, k, v, adt, omega, gamma, q_bias, k_bias, angles, delta, D, z, mimo_x, mimo_z, mimo_o,
                chunk_size, store_phi):
        out, phi = _forward(q, k, v, adt, omega, gamma, q_bias, k_bias, angles, delta, D, z, mimo_x, mimo_z,
                            mimo_o, chunk_size, store_phi)
        ctx.meta = _meta(q, v, mimo_x, mimo_o, z, chunk_steps(q.shape[2], v.dtype, chunk_size))
        ctx.save_for_backward(q, k, v, adt, omega, gamma, q_bias, k_bias, angles, delta, phi, D, z, mimo_x,
                              mimo_z, mimo_o)
        return out

    @staticmethod
    def backward(ctx, dout):
        (q, k, v, adt, omega, gamma, q_bias, k_bias, angles, delta, phi, D, z, mimo_x, mimo_z,
         mimo_o) = ctx.saved_tensors
        if phi is None:
            raise RuntimeError("Mamba3Scan: a backward through a forward called without store_phi")
        v = v.contiguous()
        z = z.contiguous() if z is not None else None
        meta = ctx.meta
        b, length, r, g, n = q.shape
        h, p = v.shape[2:]
        T, mimo, s = meta["T"], meta["MIMO"], phi.shape[-1]
        nc = triton.cdiv(length, T)
        dout = dout.contiguous()
        dummy = adt
        opt = _optional(D, z, mimo_x, mimo_z, mimo_o, dummy)
        f32 = torch.float32
        DOT = dot_dtype(v.dtype)
        states = dstates = dummy
        if nc > 1:
            # the two serial passes: entering states (the forward without outputs) and the
            # leaving states' gradients (reverse), fp32 (2, BH, p) per chunk, for this call only
            states = torch.empty((b * h, nc, 2 * meta["BH"], p), dtype=f32, device=v.device)
            dstates = torch.empty_like(states)
            Q, split = rotation_parts(n, s)
            launch(_fwd, (b * h,), q, k, v, adt, omega, gamma, q_bias, k_bias, phi, delta, dummy, *opt,
                   dummy, states, length, h, g, s, nc, v.stride(0), v.stride(1), v.stride(0), v.stride(1),
                   *phi.stride(), *adt.stride(), *omega.stride(), HAS_D=D is not None, HAS_STATES=True,
                   COMPUTE_Y=False, FUSED=False, STORE_PHI=False, GATES=False, REVERSE=False, DOT=DOT,
                   STATE_DOT=tl.float32, Q=Q, SPLIT=split, **meta)
            launch(_state_grads, (b * h,), q, adt, q_bias, phi, opt[1], opt[3], opt[4], dout, dstates,
                   length, h, g, s, nc, **meta)
        dx = torch.empty(v.shape, dtype=f32, device=v.device)
        dz = torch.empty(v.shape, dtype=f32, device=v.device) if z is not None else dummy
        dadt, dw, dg = (torch.empty((b, h, length), dtype=f32, device=v.device) for _ in range(3))
        npart = 1 + (3 * r * p if mimo else 0)
        part = torch.zeros((b, nc, h, npart), dtype=f32, device=v.device)
        # per-head rotated q̃, k̃ rounded to the input dtype and held in the dot dtype (fp32
        # interpreted), with their remainders for 16-bit inputs: for the product launches only
        qr, kr, qr_lo, kr_lo = rotated_heads(q, k, q_bias, k_bias, phi, f32 if INTERPRET else v.dtype,
                                             v.dtype)
        # the states' share of dadt, dω (PART_VX), added by PART_VS
        sdadt, sdw = (torch.empty_like(dadt) for _ in range(2)) if nc > 1 else (dummy, dummy)
        for which in (PART_VX, PART_VS):
            launch(_chunk_bwd_v, (b * h * nc,), qr, kr, v, adt, omega, gamma, *opt, dout, states, dstates,
                   dx, dz, dadt, dw, dg, sdadt, sdw, part, length, h, nc, npart, HAS_D=D is not None,
                   HAS_STATES=nc > 1, PART=which.value, DOT=DOT, **meta)
        del sdadt, sdw
        lows = (qr_lo, kr_lo) if qr_lo is not None else (qr, kr)  # (never read without a split)
        # per-head dk̃, dq̃ in the rotated frame, fp32 (b, l, r, h, n) each, for this call only
        ddk, ddq = (torch.empty((b, length, r, h, n), dtype=f32, device=v.device) for _ in range(2))
        for which, st, dd in ((PART_DK, dstates, ddk), (PART_DQ, states, ddq)):
            launch(_chunk_bwd_qk, (b * h * nc,), qr, kr, *lows, v, adt, omega, gamma, *opt[1:], dout, st, dd,
                   length, h, nc, PART=which.value, HAS_STATES=nc > 1, DOT=DOT, LOW=TL_DTYPES[v.dtype],
                   SPLIT=qr_lo is not None, **meta)
        del qr, kr, qr_lo, kr_lo, lows
        dq, dk, dphi, dqb, dkb = turned_back(q, k, q_bias, k_bias, phi, ddq, ddk)
        dangles, ddelta = angle_grads(angles, delta, dphi)
        part = part.sum((0, 1))
        rp = r * p
        dD = part[:, 0] if D is not None else None
        dmx = part[:, 1:1 + rp].view(h, r, p) if mimo else None
        dmz = part[:, 1 + rp:1 + 2 * rp].view(h, r, p) if mimo_z is not None else None
        dmo = part[:, 1 + 2 * rp:].view(h, r, p) if mimo_o is not None else None
        return (dq.to(q.dtype), dk.to(k.dtype), dx.to(v.dtype), dadt, dw, dg, dqb, dkb, dangles, ddelta, dD,
                dz.to(z.dtype) if z is not None else None, dmx, dmz, dmo, None, None)


def rotated_heads(q: torch.Tensor, k: torch.Tensor, q_bias: torch.Tensor, k_bias: torch.Tensor,
                  phi: torch.Tensor, dtype: torch.dtype, low: torch.dtype = torch.float32
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Every head's rotated q̃ = R(φ)·(q + q_bias) and k̃ (b, l, r, h, n), rounded to ``low`` and
    held in ``dtype``, from the kernels' layouts (q, k (b, l, r, g, n), biases (h, r, n), φ
    (b, l, h, s), pairs (j, j+N/2)): :func:`_rotate`. With a 16-bit ``low`` also what the
    rounding left, rounded alike (q̃ ≈ hi + lo to about 16 bits; else None). (b, l, r, h, n) in
    bf16 is 2·b·l·r·h·n bytes each."""
    b, length, r, g, n = q.shape
    h, s = phi.shape[2:]
    steps = max(1, TURN_ROWS // r)
    blocks = triton.cdiv(length, steps)
    split = low != torch.float32
    qr, kr, qr_lo, kr_lo = (torch.empty((b, length, r, h, n), dtype=dtype, device=q.device) if i < 2 or split
                            else None for i in range(4))
    launch(_rotate, (b * h * blocks,), q, k, q_bias, k_bias, phi, qr, kr, qr_lo if split else qr,
           kr_lo if split else kr, length, h, g, s, blocks, N=n, BH=half_block(n), R=r, T=steps,
           LOW=TL_DTYPES[low], SPLIT=split)
    return qr, kr, qr_lo, kr_lo


def turn_back_parts(n: int, s: int) -> tuple[int, int]:
    """Widths of :func:`_turn_back`'s tiles of one half of the pairs: QR for the rotated pairs
    j < s (the power of two ≥ s, at most n/2) and QU for the unrotated QR ≤ j < n/2 (the power of
    two ≥ their count, masked past n/2; 0: there are none)."""
    half = n // 2
    qr = min(triton.next_power_of_2(max(s, 1)), half)
    return qr, triton.next_power_of_2(half - qr) if half > qr else 0


def turned_back(q: torch.Tensor, k: torch.Tensor, q_bias: torch.Tensor, k_bias: torch.Tensor,
                phi: torch.Tensor, ddq: torch.Tensor, ddk: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """From every head's gradients with respect to its rotated q̃, k̃ (``ddq``, ``ddk``, fp32
    (b, l, r, h, n)): the gradients of q, k (fp32, the group's heads summed), φ and the two
    biases (:func:`rotated_heads`' layouts); :func:`_turn_back`."""
    b, length, r, g, n = q.shape
    h, s = phi.shape[2:]
    steps = max(1, TURN_BACK_ROWS // r)
    blocks = triton.cdiv(length, steps)
    f32 = torch.float32
    dq, dk = (torch.empty(q.shape, dtype=f32, device=q.device) for _ in range(2))
    dphi = torch.empty(phi.shape, dtype=f32, device=q.device)
    dbias = torch.empty((b, blocks, h, 2, r, n), dtype=f32, device=q.device)
    qr, qu = turn_back_parts(n, s)
    launch(_turn_back, (b * g * blocks,), q, k, q_bias, k_bias, phi, ddq, ddk, dq, dk, dphi, dbias,
           length, h, g, s, blocks, HG=h // g, N=n, R=r, T=steps, QR=qr, QU=max(qu, 1), HAS_U=qu > 0)
    dqb, dkb = dbias.sum((0, 1)).unbind(1)
    return dq, dk, dphi, dqb, dkb


def supports(q: torch.Tensor, v: torch.Tensor, mimo_x: torch.Tensor | None) -> bool:
    """Whether the kernels take these shapes: power-of-two rank ≤ 16, d_state and headdim ≥ 16."""
    r = q.shape[2] if mimo_x is not None else 1
    n, p = q.shape[-1], v.shape[-1]
    return all(x & (x - 1) == 0 for x in (r, n, p)) and n >= 16 and p >= 16 and r <= 16


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
    """The Mamba-3 scan on CUDA tensors (or CPU ones under TRITON_INTERPRET=1); the contract
    of :func:`bsmamba2.ops.reference.mamba3.mamba3_scan`. ``chunk_size`` in steps, as
    :func:`chunk_steps` fits it to the tiles.

    Without a backward ahead the output pass alone runs, on the inputs as they are: A·Δ, Δ and
    the trapezoid gate read at their strides (ω, γ made in the kernel), ``reverse`` by walking the
    steps backwards. With one, ω and γ are made here (autograd differentiates them) and
    ``reverse`` flips the inputs and the output (the backward kernels walk forwards only)."""
    if not supports(q, v, mimo_x):
        raise ValueError(f"the Mamba-3 kernels need a power-of-two rank ≤ 16, d_state and headdim ≥ 16; "
                         f"got q {tuple(q.shape)}, v {tuple(v.shape)}")
    if mimo_x is None:
        # SISO pairs (2j, 2j+1) as the MIMO ones (j, j+N/2): whole-row loads of each half in the
        # kernels instead of every other column (autograd puts the gradients' columns back);
        # ``halved_pairs``: the caller's layout already
        if not halved_pairs:
            q, k, q_bias, k_bias = (halves_first(x) for x in (q, k, q_bias, k_bias))
        q, k, q_bias, k_bias = q.unsqueeze(2), k.unsqueeze(2), q_bias.unsqueeze(1), k_bias.unsqueeze(1)
    f32 = torch.float32
    if z is None:  # no gate: mimo_z takes no part in the scan and gets no gradient (the oracle's)
        mimo_z = None
    opt = [None if t is None else t.to(f32).contiguous() for t in (mimo_x, mimo_z, mimo_o)]
    q, k, v, q_bias, k_bias = q.contiguous(), k.contiguous(), channel_rows(v), q_bias.to(f32), k_bias.to(f32)
    z = None if z is None else channel_rows(z)
    if not backward_ahead(q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z, *opt):
        if adt.stride() != dt.stride():
            adt, dt = adt.contiguous(), dt.contiguous()
        out, _ = _forward(q, k, v, adt, trap, adt, q_bias.contiguous(), k_bias.contiguous(), angles, dt, D, z,
                          *opt, chunk_size, False, gates=True, reverse=reverse)
        return out
    if reverse:
        q, k, v, angles, z = (None if x is None else x.flip(1) for x in (q, k, v, angles, z))
        adt, dt, trap = (x.flip(2) for x in (adt, dt, trap))
    delta = dt.to(f32)
    lam = torch.sigmoid(trap.to(f32))
    gamma = lam * delta
    omega = gamma + F.pad(((1 - lam) * delta)[..., 1:], (0, 1))
    inputs = (q.contiguous(), k.contiguous(), channel_rows(v), adt.to(f32).contiguous(), omega.contiguous(),
              gamma.contiguous(), q_bias.contiguous(), k_bias.contiguous(), angles, delta.contiguous(), D,
              None if z is None else channel_rows(z), *opt)
    out = Mamba3Scan.apply(*inputs, chunk_size, True)
    return out.flip(1) if reverse else out
