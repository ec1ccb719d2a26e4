"""The Mamba-3 scan in Triton (SISO and MIMO rank R), forward and backward.

The math is :mod:`bsmamba2.ops.reference.mamba3`'s chunked form. A chunk holds T steps, i.e.
T·R rows (row i is step i // R, rank i % R; T = 64 / R, 32 / R in fp32): the rows of all ranks go through the
same products, so MIMO is SISO with R times the rows and a rank reduction at the end.

The state's n columns are walked in blocks of rotation pairs (:func:`pair_block`, 16 pairs:
the columns (2j, 2j+1) SISO, (j, j+N/2) MIMO): each block's q̃, k̃ columns are loaded, biased
and rotated in registers (never stored per head), used, and dropped, so no (rows, n) tile is
live, only (rows, 16) ones; the rotation is two multiply-adds per pair, no column shuffles.
The (n, p) states stay in global memory (L2), read and written a block at a time.

* forward — one program per (sequence, head) walks the chunks: per block q̃·k̃ᵀ accumulates
  the chunk's scores, q̃·H the state's share of y, and the state is updated with k̃; then
  (scores ⊙ W)·v (W: e^{S_t−S_s} ω_s below the diagonal, γ_t on it), D·v, the gate and the
  rank contraction. With gradients it keeps the state entering each chunk (else two slots).
* backward — a reverse pass per (sequence, head) writes the gradient of the state leaving each
  chunk; then one program per (sequence, group, chunk) loops over the group's heads: a first
  pass over the blocks builds the scores (both orientations, each by its own dot) and the
  state products, then dx, the decay/ω/γ gradients, and a second pass recomputes each block's
  q̃, k̃ and writes dφ and the block's dq, dk, added up over the group's heads in place (the
  program owns those rows). Bias, D and ``mimo_*`` gradients are per-chunk partial sums added
  up by PyTorch. No atomics.

φ, ω, γ (cumulative angles and trapezoid weights, (b, h, l[, s]) tensors) are computed in
fp32 by PyTorch around the kernels, so autograd differentiates tanh, the cumsum and the
sigmoid. sin and cos are Triton's accurate ones. No dot accumulator is transposed into
another dot (see :mod:`bsmamba2.ops.triton.ssd`): each orientation has its own dot.

Dot operands are the input dtype (bf16/fp16 on tensor cores) for the scores, y and dv, but
fp32 (tf32 on a GPU) for everything the angles' gradient is made of: the states, their
gradients and the products behind dq̃, dk̃. dφ is a cancelling sum (turning every q̃, k̃ of a
head by one angle changes nothing, so Σ_t dφ_t = 0) whose tail sums are the angles'
gradient; with bf16 operands there it missed its tolerance at length 801 (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from bsmamba2.ops.triton.common import backward_ahead, configs, dot_dtype, sigmoid

CHUNK_ROWS = 64
PAIRS = 16


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
def _pair_columns(nb, BH: tl.constexpr, N: tl.constexpr, MIMO: tl.constexpr):
    """Block nb of BH rotation pairs: pair indices j, their columns i0, i1 ((2j, 2j+1) SISO,
    (j, j+N/2) MIMO), and which pairs exist (j < N/2: a block may be wider than N/2)."""
    j = nb * BH + tl.arange(0, BH)
    mj = j < N // 2
    if MIMO:
        return j, j, j + N // 2, mj
    return j, 2 * j, 2 * j + 1, mj


@triton.jit
def _turns(phi_ptr, bi, hi, t, mt, j, L, H, S, T: tl.constexpr, R: tl.constexpr, BH: tl.constexpr):
    """cos φ and sin φ of the block's pairs per row, (T·R, BH) (1 and 0 on unrotated pairs)."""
    phi = tl.load(phi_ptr + ((bi * L + t[:, None]) * H + hi) * S + j[None, :],
                  mask=mt[:, None] & (j < S)[None, :], other=0.0)
    return _rows2(tl.cos(phi), T, R, BH), _rows2(tl.sin(phi), T, R, BH)


@triton.jit
def _pair(x_ptr, bias_ptr, bi, gi, hi, t, mt, L, G, i0, i1, mj, cos, sin,
          T: tl.constexpr, R: tl.constexpr, N: tl.constexpr):
    """The block's rotated columns (x̃_i0, x̃_i1) of q̃ or k̃ for head hi: R(φ)·(x + bias) on each
    pair, fp32 (T·R, BH) each, 0 past the end."""
    ROWS: tl.constexpr = T * R
    r = tl.arange(0, ROWS) % R
    mr = _rows(mt, T, R)
    row = (((bi * L + _rows(t, T, R)) * R + r) * G + gi) * N
    brow = (hi * R + r) * N
    m = mr[:, None] & mj[None, :]
    x0 = tl.load(x_ptr + row[:, None] + i0[None, :], mask=m, other=0.0).to(tl.float32)
    x1 = tl.load(x_ptr + row[:, None] + i1[None, :], mask=m, other=0.0).to(tl.float32)
    x0 = tl.where(m, x0 + tl.load(bias_ptr + brow[:, None] + i0[None, :], mask=m, other=0.0), 0.0)
    x1 = tl.where(m, x1 + tl.load(bias_ptr + brow[:, None] + i1[None, :], mask=m, other=0.0), 0.0)
    return x0 * cos - x1 * sin, x0 * sin + x1 * cos


@triton.jit
def _state_rows(ptr, i0, i1, mj, P: tl.constexpr):
    """Rows i0 and i1 of an (n, p) fp32 state at ptr: (BH, P) each, 0 for missing pairs."""
    op = tl.arange(0, P)
    m = mj[:, None]
    return (tl.load(ptr + i0[:, None] * P + op[None, :], mask=m, other=0.0),
            tl.load(ptr + i1[:, None] * P + op[None, :], mask=m, other=0.0))


@triton.jit
def _store_state_rows(ptr, i0, i1, mj, h0, h1, P: tl.constexpr):
    op = tl.arange(0, P)
    tl.store(ptr + i0[:, None] * P + op[None, :], h0, mask=mj[:, None])
    tl.store(ptr + i1[:, None] * P + op[None, :], h1, mask=mj[:, None])


@triton.jit
def _values(x_ptr, mx_ptr, bi, hi, t, mt, L, H, T: tl.constexpr, P: tl.constexpr, R: tl.constexpr,
            MIMO: tl.constexpr):
    """v rows (T·R, P): x_t ⊙ mimo_x_r (x_t for SISO), fp32; x per row and mimo_x per row."""
    ROWS: tl.constexpr = T * R
    orow = tl.arange(0, ROWS)
    op = tl.arange(0, P)
    tr = _rows(t, T, R)
    mr = _rows(mt, T, R)
    x = tl.load(x_ptr + ((bi * L + tr[:, None]) * H + hi) * P + op[None, :], mask=mr[:, None],
                other=0.0).to(tl.float32)
    if MIMO:
        mx = tl.load(mx_ptr + (hi * R + (orow % R)[:, None]) * P + op[None, :])
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
        E = tl.where(lower, tl.exp(tl.minimum(seg, 0.0)), 0.0)
        W = tl.where(tr[None, :] == tr[:, None], g_r[:, None], E * w_r[:, None])
    else:
        seg = cs_r[:, None] - cs_r[None, :]
        lower = tr[:, None] > tr[None, :]
        E = tl.where(lower, tl.exp(tl.minimum(seg, 0.0)), 0.0)
        W = tl.where(tr[:, None] == tr[None, :], g_r[:, None], E * w_r[None, :])
    return W, E


@triton.jit
def _gate(z_ptr, mz_ptr, bi, hi, t, mt, L, H, T: tl.constexpr, P: tl.constexpr, R: tl.constexpr,
          HAS_Z: tl.constexpr, MIMO: tl.constexpr):
    """Per row: the gate input (z or z ⊙ mimo_z_r), z itself, mimo_z (T·R, P)."""
    ROWS: tl.constexpr = T * R
    orow = tl.arange(0, ROWS)
    op = tl.arange(0, P)
    tr = _rows(t, T, R)
    mr = _rows(mt, T, R)
    if HAS_Z:
        z = tl.load(z_ptr + ((bi * L + tr[:, None]) * H + hi) * P + op[None, :], mask=mr[:, None],
                    other=0.0).to(tl.float32)
        if MIMO:
            mz = tl.load(mz_ptr + (hi * R + (orow % R)[:, None]) * P + op[None, :])
            return z * mz, z, mz
        return z, z, z
    zero = tl.zeros((ROWS, P), dtype=tl.float32)
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
        if MIMO:
            mo = tl.load(mo_ptr + (hi * R + (orow % R)[:, None]) * P + op[None, :])
        else:
            mo = tl.full((ROWS, P), 1.0, dtype=tl.float32)
    else:  # per-rank outputs (b, l, r, h, p)
        do = tl.load(dout_ptr + (((bi * L + tr[:, None]) * R + (orow % R)[:, None]) * H + hi) * P
                     + op[None, :], mask=mr[:, None], other=0.0).to(tl.float32)
        mo = tl.full((ROWS, P), 1.0, dtype=tl.float32)
    dY = do * mo
    if HAS_Z:
        dY = dY * zg * sigmoid(zg)
    return do, mo, dY


@triton.autotune(configs=configs((4, 1), (8, 1)), key=["H", "P", "N", "R", "T", "BH"])
@triton.jit
def _fwd(
    q_ptr, k_ptr, x_ptr, adt_ptr, w_ptr, g_ptr, qb_ptr, kb_ptr, phi_ptr, D_ptr, z_ptr,
    mx_ptr, mz_ptr, mo_ptr, out_ptr, states_ptr,
    L, H, G, S, NC,
    P: tl.constexpr, N: tl.constexpr, R: tl.constexpr, T: tl.constexpr, BH: tl.constexpr,
    MIMO: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_O: tl.constexpr,
    HAS_STATES: tl.constexpr, KEEP_STATES: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """One (sequence, head) walks its chunks. The (n, p) state lives in ``states_ptr`` (all
    chunks' entering states with KEEP_STATES, for the backward; else two slots in turn), read
    and updated one block of pairs at a time so that no (rows, n) tile is ever live."""
    ROWS: tl.constexpr = T * R
    NB: tl.constexpr = (N // 2 + BH - 1) // BH
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // H
    hi = pid % H
    gi = hi // (H // G)
    ot = tl.arange(0, T)
    op = tl.arange(0, P)
    on = tl.arange(0, N)
    orow = tl.arange(0, ROWS)
    Dh = tl.load(D_ptr + hi).to(tl.float32) if HAS_D else 0.0
    NP = N * P
    sbase = states_ptr + pid * (NC if KEEP_STATES else 2) * NP
    if HAS_STATES:
        tl.store(sbase + on[:, None] * P + op[None, :], tl.zeros((N, P), dtype=tl.float32))
        tl.debug_barrier()
    for c in range(NC):
        t = c * T + ot
        mt = t < L
        tr = _rows(t, T, R)
        mr = _rows(mt, T, R)
        V, _, _ = _values(x_ptr, mx_ptr, bi, hi, t, mt, L, H, T, P, R, MIMO)
        Vd = V.to(DOT)
        cs, cs_last, w, g = _decays(adt_ptr, w_ptr, g_ptr, bi, hi, t, mt, L, H)
        cs_r = _rows(cs, T, R)
        w_r = _rows(w, T, R)
        u = tl.exp(tl.minimum(cs_last - cs_r, 0.0)) * w_r  # e^{S_last − S_s} ω_s
        decay = tl.exp(cs_last)
        cur = sbase + (c if KEEP_STATES else c % 2) * NP
        nxt = sbase + (c + 1 if KEEP_STATES else (c + 1) % 2) * NP
        Sc = tl.zeros((ROWS, ROWS), dtype=tl.float32)
        y_in = tl.zeros((ROWS, P), dtype=tl.float32)
        for nb in range(NB):
            j, i0, i1, mj = _pair_columns(nb, BH, N, MIMO)
            cos, sin = _turns(phi_ptr, bi, hi, t, mt, j, L, H, S, T, R, BH)
            q0, q1 = _pair(q_ptr, qb_ptr, bi, gi, hi, t, mt, L, G, i0, i1, mj, cos, sin, T, R, N)
            k0, k1 = _pair(k_ptr, kb_ptr, bi, gi, hi, t, mt, L, G, i0, i1, mj, cos, sin, T, R, N)
            q0d, q1d, k0d, k1d = q0.to(DOT), q1.to(DOT), k0.to(DOT), k1.to(DOT)
            Sc += tl.dot(q0d, tl.trans(k0d), input_precision=PREC)
            Sc += tl.dot(q1d, tl.trans(k1d), input_precision=PREC)
            if HAS_STATES:
                h0, h1 = _state_rows(cur, i0, i1, mj, P)
                y_in += tl.dot(q0d, h0.to(DOT), input_precision=PREC)
                y_in += tl.dot(q1d, h1.to(DOT), input_precision=PREC)
                if c + 1 < NC:
                    h0 = decay * h0 + tl.dot(tl.trans(k0 * u[:, None]), V, input_precision=PREC)
                    h1 = decay * h1 + tl.dot(tl.trans(k1 * u[:, None]), V, input_precision=PREC)
                    _store_state_rows(nxt, i0, i1, mj, h0, h1, P)
        if HAS_STATES:
            tl.debug_barrier()
        W, _ = _weights(cs_r, w_r, _rows(g, T, R), tr, False)
        y = tl.dot((Sc * W).to(DOT), Vd, input_precision=PREC) + Dh * V
        if HAS_STATES:
            y += tl.exp(cs_r)[:, None] * y_in
        zg, _, _ = _gate(z_ptr, mz_ptr, bi, hi, t, mt, L, H, T, P, R, HAS_Z, MIMO)
        if HAS_Z:
            y = y * zg * sigmoid(zg)
        if HAS_O:
            if MIMO:
                mo = tl.load(mo_ptr + (hi * R + (orow % R)[:, None]) * P + op[None, :])
                out = _rank_sum(y * mo, T, R, P)
            else:
                out = y
            tl.store(out_ptr + ((bi * L + t[:, None]) * H + hi) * P + op[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=mt[:, None])
        else:
            rows = ((bi * L + tr[:, None]) * R + (orow % R)[:, None]) * H + hi
            tl.store(out_ptr + rows * P + op[None, :], y.to(out_ptr.dtype.element_ty), mask=mr[:, None])


@triton.autotune(configs=configs((4, 1), (8, 1)), key=["H", "P", "N", "R", "T", "BH"])
@triton.jit
def _state_grads(
    q_ptr, adt_ptr, qb_ptr, phi_ptr, z_ptr, mz_ptr, mo_ptr, dout_ptr, dstates_ptr,
    L, H, G, S, NC,
    P: tl.constexpr, N: tl.constexpr, R: tl.constexpr, T: tl.constexpr, BH: tl.constexpr,
    MIMO: tl.constexpr, HAS_Z: tl.constexpr, HAS_O: tl.constexpr, PREC: tl.constexpr,
):
    """Reverse pass of one (sequence, head): the gradient of the state leaving each chunk, (n, p),
    block of pairs by block: dH_{c−1} = e^{S_last,c} dH_c + (e^{S} q̃_c)ᵀ dY_c (fp32 operands,
    as for the forward's states: see the module docstring)."""
    NB: tl.constexpr = (N // 2 + BH - 1) // BH
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // H
    hi = pid % H
    gi = hi // (H // G)
    ot = tl.arange(0, T)
    op = tl.arange(0, P)
    on = tl.arange(0, N)
    NP = N * P
    base = dstates_ptr + pid * NC * NP
    tl.store(base + (NC - 1) * NP + on[:, None] * P + op[None, :], tl.zeros((N, P), dtype=tl.float32))
    tl.debug_barrier()
    for cc in range(NC - 1):
        c = NC - 1 - cc
        t = c * T + ot
        mt = t < L
        a = tl.load(adt_ptr + (bi * H + hi) * L + t, mask=mt, other=0.0)
        ecs = tl.exp(_rows(tl.cumsum(a, 0), T, R))
        decay = tl.exp(tl.sum(a, 0))
        zg, _, _ = _gate(z_ptr, mz_ptr, bi, hi, t, mt, L, H, T, P, R, HAS_Z, MIMO)
        _, _, dY = _out_grad(dout_ptr, mo_ptr, zg, bi, hi, t, mt, L, H, T, P, R, MIMO, HAS_Z, HAS_O)
        for nb in range(NB):
            j, i0, i1, mj = _pair_columns(nb, BH, N, MIMO)
            cos, sin = _turns(phi_ptr, bi, hi, t, mt, j, L, H, S, T, R, BH)
            q0, q1 = _pair(q_ptr, qb_ptr, bi, gi, hi, t, mt, L, G, i0, i1, mj, cos, sin, T, R, N)
            d0, d1 = _state_rows(base + c * NP, i0, i1, mj, P)
            d0 = decay * d0 + tl.dot(tl.trans(q0 * ecs[:, None]), dY, input_precision=PREC)
            d1 = decay * d1 + tl.dot(tl.trans(q1 * ecs[:, None]), dY, input_precision=PREC)
            _store_state_rows(base + (c - 1) * NP, i0, i1, mj, d0, d1, P)
        tl.debug_barrier()


@triton.autotune(configs=configs((4, 1), (8, 1)), key=["H", "P", "N", "R", "T", "BH", "HAS_STATES"])
@triton.jit
def _chunk_bwd(
    q_ptr, k_ptr, x_ptr, adt_ptr, w_ptr, g_ptr, qb_ptr, kb_ptr, phi_ptr, D_ptr, z_ptr,
    mx_ptr, mz_ptr, mo_ptr, dout_ptr, states_ptr, dstates_ptr,
    dq_ptr, dk_ptr, dx_ptr, dz_ptr, dadt_ptr, dw_ptr, dg_ptr, dphi_ptr, part_ptr,
    L, H, G, S, NC, NPART,
    P: tl.constexpr, N: tl.constexpr, R: tl.constexpr, T: tl.constexpr, BH: tl.constexpr,
    MIMO: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_O: tl.constexpr,
    HAS_STATES: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """One (sequence, group, chunk): every input gradient of the chunk, head after head.

    Per head, a first pass over the blocks of pairs builds q̃·k̃ᵀ (both orientations) and the
    state products; a second pass recomputes q̃, k̃ per block and writes the angle gradient and
    the block's dq, dk, summed over the group's heads in place (this program owns those rows).
    ``part_ptr`` receives per (sequence, chunk, head) partial sums, NPART floats: d q_bias,
    d k_bias (R·N each), dD (1), then for MIMO d mimo_x, d mimo_z, d mimo_o (R·P each)."""
    ROWS: tl.constexpr = T * R
    NB: tl.constexpr = (N // 2 + BH - 1) // BH
    pid = tl.program_id(0).to(tl.int64)
    c = pid % NC
    bg = pid // NC
    bi = bg // G
    gi = bg % G
    HG = H // G
    ot = tl.arange(0, T)
    op = tl.arange(0, P)
    orow = tl.arange(0, ROWS)
    orn = tl.arange(0, R)
    t = c * T + ot
    mt = t < L
    tr = _rows(t, T, R)
    mr = _rows(mt, T, R)
    r = orow % R
    qk_row = (((bi * L + tr) * R + r) * G + gi) * N  # (rows,): where dq, dk rows start
    NP = N * P
    for hh in range(HG):
        hi = gi * HG + hh
        bh = bi * H + hi
        V, X, MX = _values(x_ptr, mx_ptr, bi, hi, t, mt, L, H, T, P, R, MIMO)
        Vd = V.to(DOT)
        cs, cs_last, w, g = _decays(adt_ptr, w_ptr, g_ptr, bi, hi, t, mt, L, H)
        cs_r = _rows(cs, T, R)
        w_r = _rows(w, T, R)
        ecs = tl.exp(cs_r)
        u_dec = tl.exp(tl.minimum(cs_last - cs_r, 0.0))
        u = u_dec * w_r
        Dh = tl.load(D_ptr + hi).to(tl.float32) if HAS_D else 0.0
        h_ptr = states_ptr + (bh * NC + c) * NP
        dh_ptr = dstates_ptr + (bh * NC + c) * NP
        # pass 1: the scores q̃·k̃ᵀ and q̃·H (the state's share of y)
        Sc = tl.zeros((ROWS, ROWS), dtype=tl.float32)
        y_in = tl.zeros((ROWS, P), dtype=tl.float32)
        for nb in range(NB):
            j, i0, i1, mj = _pair_columns(nb, BH, N, MIMO)
            cos, sin = _turns(phi_ptr, bi, hi, t, mt, j, L, H, S, T, R, BH)
            q0, q1 = _pair(q_ptr, qb_ptr, bi, gi, hi, t, mt, L, G, i0, i1, mj, cos, sin, T, R, N)
            k0, k1 = _pair(k_ptr, kb_ptr, bi, gi, hi, t, mt, L, G, i0, i1, mj, cos, sin, T, R, N)
            q0d, q1d = q0.to(DOT), q1.to(DOT)
            Sc += tl.dot(q0d, tl.trans(k0.to(DOT)), input_precision=PREC)
            Sc += tl.dot(q1d, tl.trans(k1.to(DOT)), input_precision=PREC)
            if HAS_STATES:
                h0, h1 = _state_rows(h_ptr, i0, i1, mj, P)
                y_in += tl.dot(q0d, h0.to(DOT), input_precision=PREC)
                y_in += tl.dot(q1d, h1.to(DOT), input_precision=PREC)
        W, E = _weights(cs_r, w_r, _rows(g, T, R), tr, False)
        # the pre-gate y, recomputed
        y = tl.dot((Sc * W).to(DOT), Vd, input_precision=PREC) + Dh * V
        if HAS_STATES:
            y_in = ecs[:, None] * y_in
            y += y_in
        zg, z, MZ = _gate(z_ptr, mz_ptr, bi, hi, t, mt, L, H, T, P, R, HAS_Z, MIMO)
        do, mo, dY = _out_grad(dout_ptr, mo_ptr, zg, bi, hi, t, mt, L, H, T, P, R, MIMO, HAS_Z, HAS_O)
        pbase = ((bi * NC + c) * H + hi) * NPART
        if HAS_Z:
            sg = sigmoid(zg)
            dzg = do * mo * y * sg * (1 + zg * (1 - sg))
            if MIMO:
                tl.store(dz_ptr + ((bi * L + t[:, None]) * H + hi) * P + op[None, :],
                         _rank_sum(dzg * MZ, T, R, P), mask=mt[:, None])
                tl.store(part_ptr + pbase + 2 * R * N + 1 + R * P + orn[:, None] * P + op[None, :],
                         _step_sum(dzg * z, T, R, P))
            else:
                tl.store(dz_ptr + ((bi * L + t[:, None]) * H + hi) * P + op[None, :], dzg, mask=mt[:, None])
        if MIMO and HAS_O:
            gate = zg * sigmoid(zg) if HAS_Z else 1.0
            tl.store(part_ptr + pbase + 2 * R * N + 1 + 2 * R * P + orn[:, None] * P + op[None, :],
                     _step_sum(do * y * gate, T, R, P))
        if HAS_D:
            tl.store(part_ptr + pbase + 2 * R * N, tl.sum(tl.sum(dY * V, 1), 0))
        dYd = dY.to(DOT)
        DV = tl.dot(dY, tl.trans(V), input_precision=PREC)  # fp32 operands: it makes dq̃
        # gradients of the weights: dW = (q̃·k̃)(dY·v)
        dW = Sc * DV
        dWE = dW * E  # strictly lower part, times the decay
        dWW = dWE * w_r[None, :]  # the decay-path share of each W entry
        dcs_r = tl.sum(dWW, 1) - tl.sum(dWW, 0)
        dw_r = tl.sum(dWE, 0)
        dg_r = tl.sum(tl.where(tr[:, None] == tr[None, :], dW, 0.0), 1)
        if HAS_STATES:
            dcs_r += tl.sum(dY * y_in, 1)
        # pass 2, per block of pairs: dq̃ = (dY·vᵀ ⊙ W)·k̃ + e^S dY·Hᵀ, dk̃ = (v·dYᵀ ⊙ Wᵀ)·q̃ + u v·dHᵀ;
        # the rotation x̃0 = x0 cos − x1 sin, x̃1 = x0 sin + x1 cos gives
        # dφ = x̃0 dx̃1 − x̃1 dx̃0 and (dx0, dx1) = (dx̃0 cos + dx̃1 sin, dx̃1 cos − dx̃0 sin).
        # Also k̃·q̃ᵀ (for dv) and k̃·dH. dq̃, dk̃ from fp32 operands (module docstring).
        DVW = DV * W
        WT, _ = _weights(cs_r, w_r, _rows(g, T, R), tr, True)
        DVTW = tl.dot(V, tl.trans(dY), input_precision=PREC) * WT  # its own dot, no transpose
        ScT = tl.zeros((ROWS, ROWS), dtype=tl.float32)
        KdH = tl.zeros((ROWS, P), dtype=tl.float32)
        hdh = tl.zeros((), dtype=tl.float32)
        for nb in range(NB):
            j, i0, i1, mj = _pair_columns(nb, BH, N, MIMO)
            cos, sin = _turns(phi_ptr, bi, hi, t, mt, j, L, H, S, T, R, BH)
            q0, q1 = _pair(q_ptr, qb_ptr, bi, gi, hi, t, mt, L, G, i0, i1, mj, cos, sin, T, R, N)
            k0, k1 = _pair(k_ptr, kb_ptr, bi, gi, hi, t, mt, L, G, i0, i1, mj, cos, sin, T, R, N)
            q0d, q1d, k0d, k1d = q0.to(DOT), q1.to(DOT), k0.to(DOT), k1.to(DOT)
            ScT += tl.dot(k0d, tl.trans(q0d), input_precision=PREC)
            ScT += tl.dot(k1d, tl.trans(q1d), input_precision=PREC)
            dq0 = tl.dot(DVW, k0, input_precision=PREC)
            dq1 = tl.dot(DVW, k1, input_precision=PREC)
            dk0 = tl.dot(DVTW, q0, input_precision=PREC)
            dk1 = tl.dot(DVTW, q1, input_precision=PREC)
            if HAS_STATES:
                h0, h1 = _state_rows(h_ptr, i0, i1, mj, P)
                d0, d1 = _state_rows(dh_ptr, i0, i1, mj, P)
                KdH += tl.dot(k0d, d0.to(DOT), input_precision=PREC)
                KdH += tl.dot(k1d, d1.to(DOT), input_precision=PREC)
                hdh += tl.sum(tl.sum(d0 * h0, 1), 0) + tl.sum(tl.sum(d1 * h1, 1), 0)
                dq0 += ecs[:, None] * tl.dot(dY, tl.trans(h0), input_precision=PREC)
                dq1 += ecs[:, None] * tl.dot(dY, tl.trans(h1), input_precision=PREC)
                dk0 += u[:, None] * tl.dot(V, tl.trans(d0), input_precision=PREC)
                dk1 += u[:, None] * tl.dot(V, tl.trans(d1), input_precision=PREC)
            dphi = q0 * dq1 - q1 * dq0 + k0 * dk1 - k1 * dk0
            tl.store(dphi_ptr + ((bi * L + t[:, None]) * H + hi) * S + j[None, :], _rank_sum(dphi, T, R, BH),
                     mask=mt[:, None] & (j < S)[None, :])
            m = mr[:, None] & mj[None, :]
            g0 = tl.where(m, dq0 * cos + dq1 * sin, 0.0)
            g1 = tl.where(m, dq1 * cos - dq0 * sin, 0.0)
            tl.store(part_ptr + pbase + orn[:, None] * N + i0[None, :], _step_sum(g0, T, R, BH),
                     mask=mj[None, :])
            tl.store(part_ptr + pbase + orn[:, None] * N + i1[None, :], _step_sum(g1, T, R, BH),
                     mask=mj[None, :])
            at0 = qk_row[:, None] + i0[None, :]
            at1 = qk_row[:, None] + i1[None, :]
            mh = m & (hh > 0)
            tl.store(dq_ptr + at0, g0 + tl.load(dq_ptr + at0, mask=mh, other=0.0), mask=m)
            tl.store(dq_ptr + at1, g1 + tl.load(dq_ptr + at1, mask=mh, other=0.0), mask=m)
            g0 = tl.where(m, dk0 * cos + dk1 * sin, 0.0)
            g1 = tl.where(m, dk1 * cos - dk0 * sin, 0.0)
            tl.store(part_ptr + pbase + R * N + orn[:, None] * N + i0[None, :], _step_sum(g0, T, R, BH),
                     mask=mj[None, :])
            tl.store(part_ptr + pbase + R * N + orn[:, None] * N + i1[None, :], _step_sum(g1, T, R, BH),
                     mask=mj[None, :])
            tl.store(dk_ptr + at0, g0 + tl.load(dk_ptr + at0, mask=mh, other=0.0), mask=m)
            tl.store(dk_ptr + at1, g1 + tl.load(dk_ptr + at1, mask=mh, other=0.0), mask=m)
        dV = tl.dot((ScT * WT).to(DOT), dYd, input_precision=PREC) + Dh * dY
        dcs_last = 0.0
        if HAS_STATES:
            dV += u[:, None] * KdH
            du = tl.sum(V * KdH, 1)
            dw_r += du * u_dec
            dcs_r -= du * u
            dcs_last = tl.sum(du * u, 0) + tl.exp(cs_last) * hdh
        # S_t = Σ_{k≤t} a_k within the chunk, S_last = Σ a_k: da_k = Σ_{t≥k} dS_t + dS_last
        dcs = tl.sum(tl.reshape(dcs_r, (T, R)), 1)
        da = tl.sum(dcs, 0) - tl.cumsum(dcs, 0) + dcs + dcs_last
        tl.store(dadt_ptr + bh * L + t, da, mask=mt)
        tl.store(dw_ptr + bh * L + t, tl.sum(tl.reshape(dw_r, (T, R)), 1), mask=mt)
        tl.store(dg_ptr + bh * L + t, tl.sum(tl.reshape(dg_r, (T, R)), 1), mask=mt)
        # v = x ⊙ mimo_x
        if MIMO:
            tl.store(dx_ptr + ((bi * L + t[:, None]) * H + hi) * P + op[None, :],
                     _rank_sum(dV * MX, T, R, P), mask=mt[:, None])
            tl.store(part_ptr + pbase + 2 * R * N + 1 + orn[:, None] * P + op[None, :],
                     _step_sum(dV * X, T, R, P))
        else:
            tl.store(dx_ptr + ((bi * L + t[:, None]) * H + hi) * P + op[None, :], dV, mask=mt[:, None])
        tl.debug_barrier()  # the next head adds to these dq, dk


def chunk_steps(rank: int, dtype: torch.dtype, chunk_size: int | None = None) -> int:
    """Steps per chunk: the largest power of two ≤ ``chunk_size`` (default: all that fit) whose
    rows fit a tile, at most 64 rows of rank R (32 for fp32, whose dot operands take twice the
    shared memory: 64 rows need 240 KB in the backward, over the H100/H200's 227 KB) and at
    least 16 (the smallest dot)."""
    most = (CHUNK_ROWS if dtype != torch.float32 else CHUNK_ROWS // 2) // rank
    if chunk_size is None:
        return most
    return min(most, max(1 << (chunk_size.bit_length() - 1), 16 // rank, 1))


def pair_block(n: int) -> int:
    """Rotation pairs per block of the state's n columns (2 columns each): the kernels hold
    (rows, block) tiles of q̃, k̃ instead of (rows, n) ones; at least 16 (the smallest dot),
    masked past n/2."""
    return max(16, min(PAIRS, n // 2))


class Mamba3Scan(torch.autograd.Function):
    """The kernels on prepared inputs: q, k (b, l, r, g, n); v, z (b, l, h, p); adt, ω, γ (b, h, l)
    fp32; biases (h, r, n) fp32; φ (b, l, h, s) fp32; D (h); mimo_* (h, r, p) fp32 or None."""

    @staticmethod
    def forward(ctx, q, k, v, adt, omega, gamma, q_bias, k_bias, phi, D, z, mimo_x, mimo_z, mimo_o,
                chunk_size, backward: bool):
        b, length, r, g, n = q.shape
        h, p = v.shape[2:]
        mimo = mimo_x is not None
        T = chunk_steps(r, v.dtype, chunk_size)
        nc = triton.cdiv(length, T)
        has_o = mimo_o is not None or not mimo
        out = v.new_empty((b, length, h, p) if has_o else (b, length, r, h, p))
        keep = backward and nc > 1
        # the state entering every chunk for the backward, else two slots used in turn
        states = v.new_empty((b * h, nc if keep else 2, n, p), dtype=torch.float32) if nc > 1 else out
        meta = dict(P=p, N=n, R=r, T=T, BH=pair_block(n), MIMO=mimo, HAS_D=D is not None, HAS_Z=z is not None,
                    HAS_O=has_o, DOT=dot_dtype(v.dtype), PREC="tf32")
        dummy = adt
        _fwd[(b * h,)](q, k, v, adt, omega, gamma, q_bias, k_bias, phi, D if D is not None else dummy,
                       z if z is not None else dummy, mimo_x if mimo else dummy, mimo_z if mimo_z is not None
                       else dummy, mimo_o if mimo_o is not None else dummy, out, states,
                       length, h, g, phi.shape[-1], nc, HAS_STATES=nc > 1, KEEP_STATES=keep, **meta)
        ctx.meta = meta
        ctx.save_for_backward(q, k, v, adt, omega, gamma, q_bias, k_bias, phi, D, z, mimo_x, mimo_z, mimo_o,
                              states if nc > 1 else None)
        return out

    @staticmethod
    def backward(ctx, dout):
        (q, k, v, adt, omega, gamma, q_bias, k_bias, phi, D, z, mimo_x, mimo_z, mimo_o,
         states) = ctx.saved_tensors
        meta = ctx.meta
        b, length, r, g, n = q.shape
        h, p = v.shape[2:]
        T, mimo, s = meta["T"], meta["MIMO"], phi.shape[-1]
        nc = triton.cdiv(length, T)
        dout = dout.contiguous()
        dummy = adt
        opt = (D if D is not None else dummy, z if z is not None else dummy, mimo_x if mimo else dummy,
               mimo_z if mimo_z is not None else dummy, mimo_o if mimo_o is not None else dummy)
        common = {k_: meta[k_] for k_ in ("P", "N", "R", "T", "BH", "MIMO", "HAS_Z", "HAS_O", "PREC")}
        dstates = dummy
        if nc > 1:
            dstates = torch.empty_like(states)
            _state_grads[(b * h,)](q, adt, q_bias, phi, opt[1], opt[3], opt[4], dout, dstates,
                                   length, h, g, s, nc, **common)
        f32 = torch.float32
        dq = torch.empty(q.shape, dtype=f32, device=q.device)
        dk = torch.empty_like(dq)
        dx = torch.empty(v.shape, dtype=f32, device=v.device)
        dz = torch.empty(v.shape, dtype=f32, device=v.device) if z is not None else dummy
        dadt, dw, dg = (torch.empty((b, h, length), dtype=f32, device=v.device) for _ in range(3))
        dphi = torch.empty(phi.shape, dtype=f32, device=v.device)
        npart = 2 * r * n + 1 + (3 * r * p if mimo else 0)
        part = torch.zeros((b, nc, h, npart), dtype=f32, device=v.device)
        _chunk_bwd[(b * g * nc,)](q, k, v, adt, omega, gamma, q_bias, k_bias, phi, *opt, dout,
                                  states if states is not None else dummy, dstates,
                                  dq, dk, dx, dz, dadt, dw, dg, dphi, part,
                                  length, h, g, s, nc, npart, HAS_D=D is not None,
                                  HAS_STATES=nc > 1, DOT=meta["DOT"], **common)
        part = part.sum((0, 1))
        rn, rp = r * n, r * p
        dqb, dkb = part[:, :rn].view(h, r, n), part[:, rn:2 * rn].view(h, r, n)
        dD = part[:, 2 * rn] if D is not None else None
        dmx = part[:, 2 * rn + 1:2 * rn + 1 + rp].view(h, r, p) if mimo else None
        dmz = part[:, 2 * rn + 1 + rp:2 * rn + 1 + 2 * rp].view(h, r, p) if mimo_z is not None else None
        dmo = part[:, 2 * rn + 1 + 2 * rp:].view(h, r, p) if mimo_o is not None else None
        return (dq.to(q.dtype), dk.to(k.dtype), dx.to(v.dtype), dadt, dw, dg, dqb, dkb, dphi, dD,
                dz.to(z.dtype) if z is not None else None, dmx, dmz, dmo, None, None)


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
) -> torch.Tensor:
    """The Mamba-3 scan on CUDA tensors (or CPU ones under TRITON_INTERPRET=1); the contract
    of :func:`bsmamba2.ops.reference.mamba3.mamba3_scan`. ``chunk_size`` in steps, as
    :func:`chunk_steps` fits it to the tiles."""
    if not supports(q, v, mimo_x):
        raise ValueError(f"the Mamba-3 kernels need a power-of-two rank ≤ 16, d_state and headdim ≥ 16; "
                         f"got q {tuple(q.shape)}, v {tuple(v.shape)}")
    if mimo_x is None:
        q, k, q_bias, k_bias = q.unsqueeze(2), k.unsqueeze(2), q_bias.unsqueeze(1), k_bias.unsqueeze(1)
    f32 = torch.float32
    delta = dt.to(f32)
    lam = torch.sigmoid(trap.to(f32))
    gamma = lam * delta
    omega = gamma + F.pad(((1 - lam) * delta)[..., 1:], (0, 1))
    phi = (math.pi * torch.tanh(angles.to(f32)) * delta.transpose(1, 2).unsqueeze(-1)).cumsum(1)
    if z is None:  # no gate: mimo_z takes no part in the scan and gets no gradient (the oracle's)
        mimo_z = None
    opt = [None if t is None else t.to(f32).contiguous() for t in (mimo_x, mimo_z, mimo_o)]
    inputs = (q.contiguous(), k.contiguous(), v.contiguous(), adt.to(f32).contiguous(), omega.contiguous(),
              gamma.contiguous(), q_bias.to(f32).contiguous(), k_bias.to(f32).contiguous(), phi.contiguous(),
              D, None if z is None else z.contiguous(), *opt)
    return Mamba3Scan.apply(*inputs, chunk_size, backward_ahead(*inputs))
