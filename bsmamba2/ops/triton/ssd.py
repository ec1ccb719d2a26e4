"""SSD (Mamba-2 selective scan) in Triton: forward and backward, dt_bias + softplus fused.

Forward:

* **chunked** — one program per (sequence, head) walks the chunks of ``FWD_CHUNK`` steps in
  order, carrying the fp32 state in registers: inside a chunk the scan is a masked
  "attention" product, across chunks the state is passed on. Each chunk's tiles are loaded
  while the chunk before is computed.
* **short** — sequences of at most ``CHUNK`` steps (the band axis: 62 bands) fit in one
  chunk: one program per (sequence, group) computes C·Bᵀ once and loops over the heads of
  the group with one quadratic block each and no state at all.

Backward: two cheap serial passes per (sequence, head) store, per chunk, the entering
state (the forward kernel again) and the gradient of the leaving state (a reverse pass);
then every chunk in parallel computes the input gradients of its chunk in three launches:
dx with the dt-side gradients (one program per (sequence, head, chunk) on long sequences,
per (sequence, group) with a loop over the heads on short ones), dB and dC (per (sequence,
group, chunk), summed over the group's heads in an fp32 accumulator, no atomics). Short
sequences skip the serial passes: the chunk is the sequence.

Decays are fp32 and every exponent is clamped to ≤ 0 (masked lanes never overflow). The
dot operands are the input dtype (fp32 accumulation); no dot accumulator is ever
transposed into another dot (Triton 3.4–3.7 miscompile that on Hopper): each orientation
a product needs is computed by its own dot from loaded tiles.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bsmamba2.ops.triton.common import (
    along,
    block,
    configs,
    cumsum_grad,
    dot_dtype,
    exp,
    launch,
    sigmoid,
    softplus,
)

CHUNK = 64


@triton.jit
def _chunk_decay(dt_ptrs, mask, A, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ (0 on masked lanes), the pre-softplus value u, and the in-chunk cumulative decay."""
    return _decay(tl.load(dt_ptrs, mask=mask, other=0.0), mask, A, bias, HAS_BIAS, SOFTPLUS)


@triton.jit
def _decay(dt, mask, A, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """:func:`_chunk_decay` of a chunk's raw dt, already loaded."""
    u = dt.to(tl.float32)
    if HAS_BIAS:
        u += bias
    delta = softplus(u) if SOFTPLUS else u
    delta = tl.where(mask, delta, 0.0)
    a = delta * A
    return u, delta, tl.cumsum(a, 0), tl.sum(a, 0)


@triton.jit
def _intra_fwd(G, cs, delta, X, causal, DOT: tl.constexpr, PREC: tl.constexpr):
    """Σ_{s≤t} (C_t·B_s) e^{cs_t−cs_s} Δ_s x_s for the rows t of one chunk."""
    seg = cs[:, None] - cs[None, :]
    M = tl.where(causal, G * exp(tl.minimum(seg, 0.0)), 0.0) * delta[None, :]
    return tl.dot(M.to(DOT), X.to(DOT), input_precision=PREC)


@triton.jit
def _dt_grads(ddelta, dcs, dcs_last, u, delta, mask, A, SOFTPLUS: tl.constexpr):
    """Chain rule from (direct dΔ, d cumsum) to the raw dt; also the dA contribution."""
    da = cumsum_grad(dcs, dcs_last)
    dd = ddelta + da * A
    du = dd * sigmoid(u) if SOFTPLUS else dd
    return tl.where(mask, du, 0.0), tl.sum(da * delta, 0)


@triton.jit
def _chunk_tiles(x_ptr, dt_ptr, B_ptr, C_ptr, bi, hi, gi, t, op, on, L, P, N,
                 sxb, sxl, sxh, sxp, sdb, sdl, sdh, sBb, sBl, sBg, sBn, sCb, sCl, sCg, sCn,
                 COMPUTE_Y: tl.constexpr):
    """The raw dt, x, B and (``COMPUTE_Y``) C of one chunk, steps t (zeros past the sequence)."""
    mq = t < L
    qn_mask = mq[:, None] & (on < N)[None, :]
    Bm = tl.load(B_ptr + bi * sBb + gi * sBg + t[:, None] * sBl + on[None, :] * sBn, mask=qn_mask, other=0.0)
    Cm = Bm  # not read without COMPUTE_Y
    if COMPUTE_Y:
        Cm = tl.load(C_ptr + bi * sCb + gi * sCg + t[:, None] * sCl + on[None, :] * sCn,
                     mask=qn_mask, other=0.0)
    dt = tl.load(dt_ptr + bi * sdb + t * sdl + hi * sdh, mask=mq, other=0.0)
    X = tl.load(x_ptr + bi * sxb + hi * sxh + t[:, None] * sxl + op[None, :] * sxp,
                mask=mq[:, None] & (op < P)[None, :], other=0.0)
    return dt, X, Bm, Cm


@triton.autotune(configs=configs((4, 1), (4, 3), (8, 1)), key=["H", "P", "N", "COMPUTE_Y", "BLOCK_Q"])
# Both passes run best on 4 warps on the H200 (the backward's states pass, COMPUTE_Y False with
# 64-step chunks, spills on 4 warps and not on 8: tools/triton_spills.py, so 8 stays a
# candidate); the stages change nothing (the loads are prefetched by hand). Measured:
# docs/benchmarks.md, "Kernel design measurements" and issue 19's "The SSD forward's loads
# one chunk ahead".
@triton.jit
def _chunked_fwd(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, h0_ptr, y_ptr, hout_ptr, states_ptr,
    L, H, HG, P, N,
    sxb, sxl, sxh, sxp, sdb, sdl, sdh, sBb, sBl, sBg, sBn, sCb, sCl, sCg, sCn, syb, syl, syh, syp,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
    STORE_FINAL: tl.constexpr, STORE_STATES: tl.constexpr, COMPUTE_Y: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // H
    hi = pid % H
    gi = hi // HG
    oq = tl.arange(0, BLOCK_Q)
    op = tl.arange(0, BLOCK_P)
    on = tl.arange(0, BLOCK_N)
    mp = op < P
    mn = on < N
    A = tl.load(A_ptr + hi).to(tl.float32)
    bias = tl.load(bias_ptr + hi).to(tl.float32) if HAS_BIAS else 0.0
    Dh = tl.load(D_ptr + hi).to(tl.float32) if HAS_D else 0.0
    causal = oq[:, None] >= oq[None, :]
    state_off = pid * P * N
    nt_off = on[:, None] + op[None, :] * N  # (n, p) view of a (p, n) row-major state
    nt_mask = mn[:, None] & mp[None, :]
    if HAS_H0:
        HT = tl.load(h0_ptr + state_off + nt_off, mask=nt_mask, other=0.0).to(tl.float32)
    else:
        HT = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    # Each chunk's tiles are loaded during the chunk before: the loop is latency bound, and
    # Triton does not pipeline these loads itself (num_stages changes nothing here).
    dt_next, X_next, B_next, C_next = _chunk_tiles(
        x_ptr, dt_ptr, B_ptr, C_ptr, bi, hi, gi, oq, op, on, L, P, N, sxb, sxl, sxh, sxp, sdb, sdl, sdh,
        sBb, sBl, sBg, sBn, sCb, sCl, sCg, sCn, COMPUTE_Y)
    nchunks = tl.cdiv(L, BLOCK_Q)
    for c in range(nchunks):
        t = c * BLOCK_Q + oq
        mq = t < L
        dt, X, Bm, Cm = dt_next, X_next, B_next.to(DOT), C_next.to(DOT)
        dt_next, X_next, B_next, C_next = _chunk_tiles(
            x_ptr, dt_ptr, B_ptr, C_ptr, bi, hi, gi, t + BLOCK_Q, op, on, L, P, N, sxb, sxl, sxh, sxp,
            sdb, sdl, sdh, sBb, sBl, sBg, sBn, sCb, sCl, sCg, sCn, COMPUTE_Y)
        if COMPUTE_Y:
            G = tl.dot(Cm, tl.trans(Bm), input_precision=PREC)
        _, delta, cs, cs_last = _decay(dt, mq, A, bias, HAS_BIAS, SOFTPLUS)
        if STORE_STATES:
            # (n, p) layout, as HT is held: the store is coalesced along p.
            tl.store(states_ptr + (pid * nchunks + c) * P * N + on[:, None] * P + op[None, :],
                     HT.to(states_ptr.dtype.element_ty), mask=nt_mask)
        if COMPUTE_Y:
            y = _intra_fwd(G, cs, delta, X, causal, DOT, PREC)
            y += exp(cs)[:, None] * tl.dot(Cm, HT.to(DOT), input_precision=PREC)
            if HAS_D:
                y += Dh * X.to(tl.float32)
            tl.store(y_ptr + bi * syb + hi * syh + t[:, None] * syl + op[None, :] * syp,
                     y.to(y_ptr.dtype.element_ty), mask=mq[:, None] & mp[None, :])
        w = exp(tl.minimum(cs_last - cs, 0.0)) * delta
        Xw = (X.to(tl.float32) * w[:, None]).to(DOT)
        HT = tl.dot(tl.trans(Bm), Xw, exp(cs_last) * HT, input_precision=PREC)
    if STORE_FINAL:
        tl.store(hout_ptr + state_off + nt_off, HT, mask=nt_mask)


@triton.autotune(configs=configs((4, 1), (4, 2), (8, 2)), key=["H", "P", "N"])
@triton.jit
def _state_grads(
    dt_ptr, A_ptr, C_ptr, bias_ptr, dy_ptr, dfin_ptr, dstates_ptr, dh0_ptr,
    L, H, HG, P, N, NC,
    sdb, sdl, sdh, sCb, sCl, sCg, sCn, syb, syl, syh, syp,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_DFIN: tl.constexpr, HAS_H0: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT: tl.constexpr, PREC: tl.constexpr,
):
    """Reverse pass over the chunks of one (sequence, head): the gradient of the state
    leaving each chunk (stored, (p, n) layout), and of the initial state."""
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // H
    hi = pid % H
    gi = hi // HG
    oq = tl.arange(0, BLOCK_Q)
    op = tl.arange(0, BLOCK_P)
    on = tl.arange(0, BLOCK_N)
    mp = op < P
    mn = on < N
    A = tl.load(A_ptr + hi).to(tl.float32)
    bias = tl.load(bias_ptr + hi).to(tl.float32) if HAS_BIAS else 0.0
    pn_off = op[:, None] * N + on[None, :]
    pn_mask = mp[:, None] & mn[None, :]
    if HAS_DFIN:
        dH = tl.load(dfin_ptr + pid * P * N + pn_off, mask=pn_mask, other=0.0).to(tl.float32)
    else:
        dH = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    # Each chunk's dt is loaded during the chunk after it (the one before in this walk): Triton
    # pipelines dy and C here but not these 2-byte strided loads (as in _chunk_bwd's heads).
    dt_ptrs = dt_ptr + bi * sdb + hi * sdh
    t = (NC - 1) * BLOCK_Q + oq
    dt_next = tl.load(dt_ptrs + t * sdl, mask=t < L, other=0.0)
    for cc in range(NC):
        c = NC - 1 - cc
        t = c * BLOCK_Q + oq
        mq = t < L
        dt = dt_next
        dt_next = tl.load(dt_ptrs + (t - BLOCK_Q) * sdl, mask=t >= BLOCK_Q, other=0.0)
        _, _, cs, cs_last = _decay(dt, mq, A, bias, HAS_BIAS, SOFTPLUS)
        tl.store(dstates_ptr + (pid * NC + c) * P * N + pn_off, dH.to(dstates_ptr.dtype.element_ty),
                 mask=pn_mask)
        dY = tl.load(dy_ptr + bi * syb + hi * syh + t[:, None] * syl + op[None, :] * syp,
                     mask=mq[:, None] & mp[None, :], other=0.0).to(tl.float32)
        Cm = tl.load(C_ptr + bi * sCb + gi * sCg + t[:, None] * sCl + on[None, :] * sCn,
                     mask=mq[:, None] & mn[None, :], other=0.0).to(DOT)
        dYs = (dY * exp(cs)[:, None]).to(DOT)
        dH = exp(cs_last) * dH + tl.dot(tl.trans(dYs), Cm, input_precision=PREC)
    if HAS_H0:
        tl.store(dh0_ptr + pid * P * N + pn_off, dH, mask=pn_mask)


PART_DX, PART_DB, PART_DC = (tl.constexpr(i) for i in range(3))
"""What a launch of :func:`_chunk_bwd` computes: dx with the dt/dA/dD/dbias gradients, dB, dC."""


def chunk_bwd_candidates(candidates: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The autotune candidates of one :func:`_chunk_bwd` launch: PART_DX never on 2 warps.
    There it spills 1.4-8 KB per thread (tools/triton_spills.py), and the local memory that
    CUDA then reserves for every thread the GPU can hold (0.4-2.2 GB on an H100) outlives the
    tuning: enough to run the benchmark's training step (5 x 8 s, no recompute, 77.7 GB) out
    of memory on an 80 GB card."""
    part = {**named_args, **kwargs}["PART"]
    if getattr(part, "value", part) != PART_DX.value:
        return candidates
    return [c for c in candidates if c.num_warps > 2] or candidates


@triton.autotune(configs=configs((4, 3), (4, 1), (2, 2)),
                 key=["HG", "P", "N", "BLOCK_Q", "HAS_STATES", "PART", "HEADS"],
                 prune_configs_by={"early_config_prune": chunk_bwd_candidates})
# The configurations that won some part on some axis of the paper model (8 warps never won;
# 2 warps win dB and dC on the band axis): docs/benchmarks.md, "Kernel design measurements".
@triton.jit
def _chunk_bwd(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, states_ptr, dstates_ptr,
    dx_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    L, H, HG, P, N, NC,
    sxb, sxl, sxh, sxp, sdb, sdl, sdh, sBb, sBl, sBg, sBn, sCb, sCl, sCg, sCn, syb, syl, syh, syp,
    sgxb, sgxl, sgBb, sgBl,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_STATES: tl.constexpr,
    PART: tl.constexpr, HEADS: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT: tl.constexpr, PREC: tl.constexpr,
):
    """One part of the input gradients of one chunk, for HEADS heads of one group; every
    chunk in parallel. The heads of a group share B and C, so PART_DB / PART_DC loop over
    all of them, summing in one fp32 accumulator. PART_DX takes one head per program on
    long sequences (recomputing C·Bᵀ per head is faster there than looping over the group's
    heads) and the whole group on short ones (where the loop, sharing C·Bᵀ, is faster).
    Three launches instead of one kernel keep each under the register file (the fused one
    spilled hundreds of registers). Timings of these choices: docs/benchmarks.md, "Kernel
    design measurements".

    With HAS_STATES the chunk's entering state ((n, p) layout) and the gradient of its
    leaving state ((p, n)) come from the two serial passes; without, the chunk is the whole
    sequence. State tiles are loaded along their contiguous axis only; the other
    orientation is a transpose of the loaded tile (never of a dot result).
    """
    pid = tl.program_id(0).to(tl.int64)
    c = pid % NC
    h_first = pid // NC % (H // HEADS) * HEADS  # HEADS consecutive heads of one group
    bi = pid // NC // (H // HEADS)
    gi = h_first // HG
    oq = tl.arange(0, BLOCK_Q)
    op = tl.arange(0, BLOCK_P)
    on = tl.arange(0, BLOCK_N)
    t = c * BLOCK_Q + oq
    mq = t < L
    mp = op < P
    mn = on < N
    qp_mask = mq[:, None] & mp[None, :]
    qn_mask = mq[:, None] & mn[None, :]
    pn_off = op[:, None] * N + on[None, :]
    pn_mask = mp[:, None] & mn[None, :]
    np_off = on[:, None] * P + op[None, :]
    np_mask = mn[:, None] & mp[None, :]
    causal = oq[:, None] >= oq[None, :]
    if PART != PART_DB:
        Bm = tl.load(B_ptr + bi * sBb + gi * sBg + t[:, None] * sBl + on[None, :] * sBn,
                     mask=qn_mask, other=0.0).to(DOT)
    if PART != PART_DC:
        Cm = tl.load(C_ptr + bi * sCb + gi * sCg + t[:, None] * sCl + on[None, :] * sCn,
                     mask=qn_mask, other=0.0).to(DOT)
    if PART == PART_DX:
        GT = tl.dot(Bm, tl.trans(Cm), input_precision=PREC)  # [s, t] = B_s·C_t, for every head
    else:
        acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
    # Each head's dt is loaded during the head before: Triton pipelines the loop's tiles
    # (asynchronous copies of x, dy and the states) but not these 2-byte strided loads, whose
    # latency would open every head's dependency chain (the decays feed every product).
    dt_ptrs = dt_ptr + bi * sdb + t * sdl
    dt_next = tl.load(dt_ptrs + h_first * sdh, mask=mq, other=0.0)
    for j in range(HEADS):  # a compile-time trip count: faster dB/dC than a run-time one
        hi = h_first + j
        dt = dt_next
        if HEADS > 1:
            dt_next = tl.load(dt_ptrs + (hi + 1) * sdh, mask=mq & (j + 1 < HEADS), other=0.0)
        A = tl.load(A_ptr + hi).to(tl.float32)
        bias = tl.load(bias_ptr + hi).to(tl.float32) if HAS_BIAS else 0.0
        u, delta, cs, cs_last = _decay(dt, mq, A, bias, HAS_BIAS, SOFTPLUS)
        X = tl.load(x_ptr + bi * sxb + hi * sxh + t[:, None] * sxl + op[None, :] * sxp,
                    mask=qp_mask, other=0.0)
        dY = tl.load(dy_ptr + bi * syb + hi * syh + t[:, None] * syl + op[None, :] * syp,
                     mask=qp_mask, other=0.0)
        Xd = X.to(DOT)
        # Δ_s x_s as one operand: scaling the dot's input instead of its [t, s] output
        # avoids a broadcast along columns of the dot's result (much slower dC).
        Xs = (X.to(tl.float32) * delta[:, None]).to(DOT)
        dYd = dY.to(DOT)
        seg = cs[:, None] - cs[None, :]
        sidx = ((bi * H + hi) * NC + c) * P * N
        if PART == PART_DC:
            # dC_t = Σ_{s≤t} e^{cs_t−cs_s} Δ_s (dy_t·x_s) B_s + e^{cs_t} dy_t·Hin
            dyx = tl.dot(dYd, tl.trans(Xs), input_precision=PREC)  # [t, s] = dy_t·Δ_s x_s
            dG = tl.where(causal, exp(tl.minimum(seg, 0.0)), 0.0) * dyx
            acc = tl.dot(dG.to(DOT), Bm, acc, input_precision=PREC)
            if HAS_STATES:
                Hin = tl.trans(tl.load(states_ptr + sidx + np_off, mask=np_mask, other=0.0))
                dYs = (dY.to(tl.float32) * exp(cs)[:, None]).to(DOT)
                acc = tl.dot(dYs, Hin.to(DOT), acc, input_precision=PREC)
        else:
            decay_t = tl.where(tl.trans(causal), exp(tl.minimum(-seg, 0.0)), 0.0)  # [s, t]
            if HAS_STATES:
                to_end = exp(tl.minimum(cs_last - cs, 0.0))
                dH = tl.load(dstates_ptr + sidx + pn_off, mask=pn_mask, other=0.0)  # (p, n)
            if PART == PART_DB:
                # dB_s = Σ_{t≥s} e^{cs_t−cs_s} Δ_s (x_s·dy_t) C_t + e^{cs_last−cs_s} Δ_s x_s·dH
                dGT = decay_t * tl.dot(Xs, tl.trans(dYd), input_precision=PREC)  # · Δ_s x_s·dy_t
                acc = tl.dot(dGT.to(DOT), Cm, acc, input_precision=PREC)
                if HAS_STATES:
                    Xw = (X.to(tl.float32) * (to_end * delta)[:, None]).to(DOT)
                    acc = tl.dot(Xw, dH.to(DOT), acc, input_precision=PREC)
            else:
                MT = GT * decay_t
                dX = delta[:, None] * tl.dot(MT.to(DOT), dYd, input_precision=PREC)
                prod = MT * tl.dot(Xd, tl.trans(dYd), input_precision=PREC)  # · x_s·dy_t
                ddelta = tl.sum(prod, 1)
                W = prod * delta[:, None]
                dcs = tl.sum(W, 0) - tl.sum(W, 1)
                dcs_last = 0.0
                if HAS_STATES:
                    # through the state leaving the chunk ...
                    dHT = tl.trans(dH)
                    BdH = tl.dot(Bm, dHT.to(DOT), input_precision=PREC)  # (q, p): B_s·dH[p, :]
                    xdhb = tl.sum(X.to(tl.float32) * BdH, 1)
                    dX += (to_end * delta)[:, None] * BdH
                    ddelta += to_end * xdhb
                    R = to_end * delta * xdhb
                    dcs -= R
                    # ... and through the state entering it.
                    HinT = tl.load(states_ptr + sidx + np_off, mask=np_mask, other=0.0)  # (n, p)
                    dhh = tl.sum(tl.sum(dHT.to(tl.float32) * HinT.to(tl.float32), 1), 0)
                    dcs_last = exp(cs_last) * dhh + tl.sum(R, 0)
                    CH = tl.dot(Cm, HinT.to(DOT), input_precision=PREC)  # (q, p): C_t·Hin[p, :]
                    dcs += exp(cs) * tl.sum(dY.to(tl.float32) * CH, 1)
                dD_part = tl.zeros((), dtype=tl.float32)
                if HAS_D:
                    dYf = dY.to(tl.float32)
                    dX += tl.load(D_ptr + hi).to(tl.float32) * dYf
                    dD_part = tl.sum(tl.sum(dYf * X.to(tl.float32), 1), 0)
                tl.store(dx_ptr + bi * sgxb + t[:, None] * sgxl + hi * P + op[None, :],
                         dX.to(dx_ptr.dtype.element_ty), mask=qp_mask)
                du, dA_part = _dt_grads(ddelta, dcs, dcs_last, u, delta, mq, A, SOFTPLUS)
                tl.store(ddt_ptr + (bi * L + t) * H + hi, du, mask=mq)
                part = (bi * H + hi) * NC + c
                tl.store(dA_ptr + part, dA_part)
                tl.store(dD_ptr + part, dD_part)
                tl.store(dbias_ptr + part, tl.sum(du, 0))
    if PART != PART_DX:
        out = dB_ptr if PART == PART_DB else dC_ptr
        gq = bi * sgBb + t[:, None] * sgBl + gi * N + on[None, :]
        tl.store(out + gq, acc.to(out.dtype.element_ty), mask=qn_mask)


@triton.autotune(configs=configs((2, 1), (2, 2)), key=["BLOCK_Q", "HG", "P", "N"])  # 4 warps lose
@triton.jit
def _short_fwd(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr,
    L, H, HG, P, N, G,
    sxb, sxl, sxh, sxp, sdb, sdl, sdh, sBb, sBl, sBg, sBn, sCb, sCl, sCg, sCn, syb, syl, syh, syp,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // G
    gi = pid % G
    oq = tl.arange(0, BLOCK_Q)
    op = tl.arange(0, BLOCK_P)
    on = tl.arange(0, BLOCK_N)
    mq = oq < L
    qp_mask = mq[:, None] & (op < P)[None, :]
    qn_mask = mq[:, None] & (on < N)[None, :]
    causal = oq[:, None] >= oq[None, :]
    Bm = tl.load(B_ptr + bi * sBb + gi * sBg + oq[:, None] * sBl + on[None, :] * sBn,
                 mask=qn_mask, other=0.0).to(DOT)
    Cm = tl.load(C_ptr + bi * sCb + gi * sCg + oq[:, None] * sCl + on[None, :] * sCn,
                 mask=qn_mask, other=0.0).to(DOT)
    Gm = tl.dot(Cm, tl.trans(Bm), input_precision=PREC)  # shared by the heads of the group
    for j in range(HG):
        hi = gi * HG + j
        A = tl.load(A_ptr + hi).to(tl.float32)
        bias = tl.load(bias_ptr + hi).to(tl.float32) if HAS_BIAS else 0.0
        _, delta, cs, _ = _chunk_decay(dt_ptr + bi * sdb + oq * sdl + hi * sdh, mq, A, bias,
                                       HAS_BIAS, SOFTPLUS)
        X = tl.load(x_ptr + bi * sxb + hi * sxh + oq[:, None] * sxl + op[None, :] * sxp,
                    mask=qp_mask, other=0.0)
        y = _intra_fwd(Gm, cs, delta, X, causal, DOT, PREC)
        if HAS_D:
            y += tl.load(D_ptr + hi).to(tl.float32) * X.to(tl.float32)
        tl.store(y_ptr + bi * syb + hi * syh + oq[:, None] * syl + op[None, :] * syp,
                 y.to(y_ptr.dtype.element_ty), mask=qp_mask)


FWD_CHUNK = 32
"""Chunk length of the forward's output pass: 32 beat 64 and 128 on both axes of the paper
model (docs/benchmarks.md, "Kernel design measurements"; measured before the loads one chunk
ahead)."""


def _chunk(dtype: torch.dtype) -> int:
    """Chunk length of the backward's kernels: 32 steps for fp32 tiles (shared memory), else 64."""
    return 32 if dtype == torch.float32 else CHUNK


def grad_buffers(x: torch.Tensor, B: torch.Tensor, C: torch.Tensor):
    """Empty dx, dB, dC with (h, p) / (g, n) contiguous per step. When x | B | C are the
    adjacent channel slices of one tensor (the model's conv output), they are the same slices
    of one new buffer, which :func:`bsmamba2.ops.split_channels` hands back to the conv as
    is: no concatenation of the three gradients."""
    b, length, h, p = x.shape
    g, n = B.shape[-2:]
    hp, gn = h * p, g * n
    row = x.stride(1)
    adjacent = (
        x.untyped_storage().data_ptr() == B.untyped_storage().data_ptr() == C.untyped_storage().data_ptr()
        and x.stride() == (length * row, row, p, 1) and row == hp + 2 * gn
        and B.stride() == C.stride() == (length * row, row, n, 1)
        and B.storage_offset() == x.storage_offset() + hp and C.storage_offset() == B.storage_offset() + gn
    )
    if not adjacent:
        return (x.new_empty(x.shape), B.new_empty(B.shape), C.new_empty(C.shape))
    buf = x.new_empty(b, length, hp + 2 * gn)
    dx, dB, dC = buf.split([hp, gn, gn], -1)
    return dx.view(b, length, h, p), dB.view(b, length, g, n), dC.view(b, length, g, n)


def _check(x, dt, A, B, C, D, dt_bias, initial_state) -> None:
    b, length, h, p = x.shape
    g, n = B.shape[-2:]
    if dt.shape != (b, length, h) or B.shape != (b, length, g, n) or C.shape != B.shape:
        raise ValueError(f"ssd_scan shapes: x {tuple(x.shape)}, dt {tuple(dt.shape)}, "
                         f"B {tuple(B.shape)}, C {tuple(C.shape)}")
    if h % g:
        raise ValueError(f"nheads ({h}) must be a multiple of ngroups ({g})")
    for name, v in (("A", A), ("D", D), ("dt_bias", dt_bias)):
        if v is not None and v.shape != (h,):
            raise ValueError(f"{name} must have shape ({h},), got {tuple(v.shape)}")
    if initial_state is not None and initial_state.shape != (b, h, p, n):
        raise ValueError(f"initial_state must have shape {(b, h, p, n)}")
    if length == 0:
        raise ValueError("ssd_scan needs at least one time step")


class SSDScan(torch.autograd.Function):
    """y (and the final state) of the SSD scan, with the gradients of every input."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, dt_bias, initial_state, dt_softplus, return_final, reverse, out):
        _check(x, dt, A, B, C, D, dt_bias, initial_state)
        b, length, h, p = x.shape
        g, n = B.shape[-2:]
        short = length <= CHUNK and initial_state is None and not return_final
        # out: y from an earlier call on these inputs (a recompute): only the backward is recorded
        y = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
        dummy = A  # any tensor: pointer of an absent optional input (never read)
        common = dict(
            HAS_D=D is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
            BLOCK_Q=block(length) if short else _chunk(x.dtype), BLOCK_P=block(p), BLOCK_N=block(n),
            DOT=dot_dtype(x.dtype), PREC="tf32",  # fp32 dots use tf32 on the GPU (exact in the interpreter)
        )
        (xp, dtp, Bp, Cp, yp), strides = along(reverse, x, dt, B, C, y)
        final = None
        if out is None and short:
            launch(_short_fwd, (b * g,),
                xp, dtp, A, Bp, Cp, D if D is not None else dummy, dt_bias if dt_bias is not None else dummy,
                yp, length, h, h // g, p, n, g, *strides, **common)
        elif out is None:
            final = x.new_empty(b, h, p, n, dtype=torch.float32) if return_final else dummy
            launch(_chunked_fwd, (b * h,),
                xp, dtp, A, Bp, Cp, D if D is not None else dummy, dt_bias if dt_bias is not None else dummy,
                initial_state if initial_state is not None else dummy, yp, final, dummy,
                length, h, h // g, p, n, *strides,
                HAS_H0=initial_state is not None, STORE_FINAL=return_final, STORE_STATES=False,
                COMPUTE_Y=True, **{**common, "BLOCK_Q": FWD_CHUNK})
        ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, initial_state)
        ctx.dt_softplus = bool(dt_softplus)
        ctx.short = short
        ctx.common = common
        ctx.reverse = reverse
        ctx.set_materialize_grads(False)
        return (y, final) if return_final else y

    @staticmethod
    def backward(ctx, dy, dfinal=None):
        x, dt, A, B, C, D, dt_bias, initial_state = ctx.saved_tensors
        b, length, h, p = x.shape
        g, n = B.shape[-2:]
        common, reverse = ctx.common, ctx.reverse
        dy = torch.zeros_like(x) if dy is None else dy
        (xp, dtp, Bp, Cp, dyp), strides = along(reverse, x, dt, B, C, dy)
        dummy = A
        opt = (D if D is not None else dummy, dt_bias if dt_bias is not None else dummy)
        nc = 1 if ctx.short else triton.cdiv(length, common["BLOCK_Q"])
        states = dstates = dh0 = None
        if not ctx.short:
            # The two serial passes: entering states (forward) and leaving-state gradients
            # (reverse), stored per chunk in the dot operand precision.
            store = x.dtype if x.dtype != torch.float16 else torch.float32
            states = x.new_empty(b, h, nc, n, p, dtype=store)  # (n, p) per chunk
            dstates = x.new_empty(b, h, nc, p, n, dtype=store)  # (p, n) per chunk
            has_h0 = initial_state is not None
            launch(_chunked_fwd, (b * h,),
                xp, dtp, A, Bp, Cp, *opt, initial_state if has_h0 else dummy, dummy, dummy, states,
                length, h, h // g, p, n, *strides[:15], *strides[:4],
                HAS_H0=has_h0, STORE_FINAL=False, STORE_STATES=True, COMPUTE_Y=False, **common)
            dh0 = x.new_empty(b, h, p, n, dtype=torch.float32) if has_h0 else None
            dfin = dfinal.contiguous() if dfinal is not None else None
            launch(_state_grads, (b * h,),
                dtp, A, Cp, opt[1], dyp, dfin if dfin is not None else dummy, dstates,
                dh0 if has_h0 else dummy, length, h, h // g, p, n, nc, *strides[4:7], *strides[11:],
                HAS_BIAS=common["HAS_BIAS"], SOFTPLUS=common["SOFTPLUS"], HAS_DFIN=dfin is not None,
                HAS_H0=has_h0, BLOCK_Q=common["BLOCK_Q"], BLOCK_P=common["BLOCK_P"],
                BLOCK_N=common["BLOCK_N"], DOT=common["DOT"], PREC=common["PREC"])
            dh0 = dh0.to(initial_state.dtype) if has_h0 else None
        dx, dB, dC = grad_buffers(x, B, C)
        (dxp, dBp, dCp), gstrides = along(reverse, dx, dB, dC)
        ddt = x.new_empty(b, length, h, dtype=torch.float32)
        # fp32 partial sums per (sequence, head, chunk) of dA, dD and dbias
        part = [x.new_empty(b, h, nc, dtype=torch.float32) for _ in range(3)]
        for which in (PART_DX, PART_DB, PART_DC):
            heads = 1 if which is PART_DX and not ctx.short else h // g
            launch(_chunk_bwd, (b * (h // heads) * nc,),
                xp, dtp, A, Bp, Cp, *opt, dyp, states if states is not None else dummy,
                dstates if dstates is not None else dummy, dxp, ddt, dBp, dCp, *part,
                length, h, h // g, p, n, nc, *strides, *gstrides[:2], *gstrides[4:6],
                HAS_STATES=not ctx.short, PART=which.value, HEADS=heads, **common)
        if reverse:
            ddt = ddt.flip(1)  # written at the kernel's steps (no strides): back to the sequence's
        dA, dD, dbias = (t.sum((0, 2)) for t in part)
        return (
            dx, ddt.to(dt.dtype), dA.to(A.dtype), dB, dC,
            dD.to(D.dtype) if D is not None else None,
            dbias.to(dt_bias.dtype) if dt_bias is not None else None,
            dh0, None, None, None, None,
        )


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
    """Triton SSD scan with the contract of :func:`bsmamba2.ops.reference.ssd.ssd_scan`; the
    kernels pick their own chunking. ``reverse``: the scan of the reversed sequences, in their
    own order (flip, scan, flip; the state runs from the last step to the first), computed
    without flipped copies. ``out``: y of an earlier call on these same inputs (a recompute,
    :mod:`bsmamba2.model.recompute`), returned with this call's backward and not computed
    again; only without ``return_final_state``."""
    if out is not None and (return_final_state or out.shape != x.shape or out.dtype != x.dtype
                            or not out.is_contiguous()):
        raise ValueError("ssd_scan: out must be a contiguous y like x, without return_final_state")
    return SSDScan.apply(x, dt, A, B, C, D, dt_bias, initial_state, dt_softplus, return_final_state, reverse,
                         out)
