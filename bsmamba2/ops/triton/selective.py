"""Mamba-1 selective scan in Triton: forward and backward, delta bias, softplus and SiLU gate fused.

Per channel d and state n the scan is ``h_t = exp(Δ_t A_dn) h_{t−1} + Δ_t B_tn u_t`` and
``y_t = Σ_n C_tn h_t + D u_t``, then ``y ⊙ silu(z)``. Every (channel, state) pair has its
own decay, so unlike SSD there is no matrix form: the work is one exponential per (step,
channel, state), the bound of the kernel.

Layout: a program owns one sequence and a block of channels of one B/C group; its threads
run along the channels, and each thread keeps the states of its channel in registers (the
tiles are (channel, state): Triton spreads their first axis over the lanes when no load says
otherwise). The sum over the states (``Σ_n C_n h_n``) is then a sum inside a thread, and the
recurrence a plain loop over the steps: one exponential and two fused multiply-adds per
(step, state), with no scan tree, shuffle or layout change. The strides of the (channel,
state) tiles are left unspecialised (``do_not_specialize``) so that no load is laid out for
contiguity: every tile keeps the one layout (Triton 3.6 lays a tile's first axis over the
lanes when no load says otherwise; a load known contiguous along the states would lay the
states there). B and C's stride along the states is specialised: their rows are 1-D
broadcasts, whose layout it leaves alone, and with stride 1 each of the 32 B/C loads per step
and thread takes an immediate offset instead of an address product (Triton 3.6 offline
compile for sm_90a: a quarter fewer instructions per step, and the backward's spills gone).
Nothing moves between threads except the channel sums of the backward. (The ring of the
backward is (step, state, channel), the layout Triton gives a 3-D tile: ``tl.trans`` moves
tiles in and out of it without data movement.)

Forward: the steps run in chunks of ``K`` (unrolled), the chunk's outputs kept in registers
and stored at its end: the compiler moves no load past a store (the pointers may alias), so
a per-step store would make every step wait for its loads; this way a chunk's loads are in
flight together. With gradients recorded the state entering every chunk but the first is
stored. With 16-bit inputs (``ROUGH_16BIT``) the softplus's log is one ``lg2.approx``
in place of a reciprocal and a 7-term series, and the SiLU gate one ``tanh.approx`` in
place of an exponential and a reciprocal: 7 % faster on the H200 (docs/benchmarks.md).

Backward: the chunks run in reverse, each in sub-chunks of ``SUB`` steps, the last first.
A sub-chunk restarts from the chunk's stored state (recomputing the steps before it), then
recomputes its ``SUB`` states into a register ring and walks its steps backwards with the
state gradient ``r_t = C_t dy_t + a_{t+1} r_{t+1}`` (``a = exp(Δ A)``), its outputs again
stored at its end: a ring of 2 steps at a state spacing of 4 keeps the registers of a
2-step chunk (no spills) and the memory of a 4-step one. B and C's gradients are sums over
channels: per step, recursive halving over the warp's lanes (``_sum_channels``: 31
butterfly shuffles for the 32 sums of a step, where a shuffle tree per sum takes 160), one
partial sum per (32 channels, step) that the host adds up; A's, D's and the delta bias's
are per program; no atomics.

The tensors keep mamba_ssm's ``selective_scan_fn`` layout, (batch, d, length), with any
strides: the model hands in channel-last views, read and written as they are.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bsmamba2.ops.triton.common import (
    FAST,
    INTERPRET,
    LOG2E,
    backward_ahead,
    block,
    configs,
    exp2,
    mufu,
    rcp,
    sigmoid,
)

LN2 = tl.constexpr(0.6931471805599453)

STRIDES_FWD = ["sxn", "sud", "sdd", "sAd", "sAn", "szd", "sod", "sol", "ssn", "ssd"]
# The backward loads a chunk's steps as (channel, step) tiles: a step stride of 1 specialised
# (a contiguous (b, d, L) input) would make Triton lay the steps over the lanes, and with them
# every tile of the kernel, while _sum_channels sums over the lanes as channels (measured on the
# GPU: dB off by 140 % for contiguous inputs; the interpreter has no lanes).
STRIDES_BWD = ["sxn", "sud", "sul", "sdd", "sdl", "sAd", "sAn", "szd", "szl", "ssn", "ssd", "syd", "syl",
               "sgud", "sgul", "sgdd", "sgdl", "sgzd", "sgzl"]


@triton.jit
def _softplus(x):
    """(log(1 + e^x), sigmoid(x)) in fp32, to a few ulp for every x, in ~20 instructions where
    the libdevice log and exact divisions took ~50 per (channel, step) — a fifth of the
    forward's loop. With v = e^−|x| ∈ (0, 1] and s = v / (2 + v) ∈ [0, 1/3],
    log(1 + v) = 2 atanh(s) = 2 (s + s³/3 + … + s¹³/13) (the next term is below 2·10⁻⁸
    relative), softplus(x) = max(x, 0) + log(1 + v), and sigmoid(x) = (1 or v) / (1 + v)."""
    v = exp2(tl.abs(x) * -LOG2E)
    w = 1.0 + v
    s = v * rcp(w + 1.0)
    s2 = s * s
    p = 2.0 / 13.0
    p = p * s2 + 2.0 / 11.0
    p = p * s2 + 2.0 / 9.0
    p = p * s2 + 2.0 / 7.0
    p = p * s2 + 2.0 / 5.0
    p = p * s2 + 2.0 / 3.0
    p = p * s2 + 2.0
    return tl.maximum(x, 0.0) + s * p, tl.where(x >= 0.0, 1.0, v) * rcp(w)


@triton.jit
def _log2(x):
    """log2(x) in fp32; on a GPU one MUFU.LG2 (``lg2.approx.ftz``: absolute error ~2^−22)."""
    if FAST:
        return mufu(x, "lg2.approx.ftz.f32 $0, $1;")
    else:
        return tl.log2(x)


@triton.jit
def _tanh(x):
    """tanh(x) in fp32; on a GPU one MUFU.TANH (``tanh.approx``: relative error ~2^−11)."""
    if FAST:
        return mufu(x, "tanh.approx.f32 $0, $1;")
    else:
        return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _silu(z, ROUGH: tl.constexpr):
    """z·sigmoid(z); ROUGH 2 (16-bit outputs): as h + h·tanh(h), h = z/2, one MUFU where the
    exponential and reciprocal take two. tanh.approx's error (~2^−11 of tanh) makes it
    absolute: ~|z|·2^−12, so a gate far below 0 (z < −4, silu(z) > −0.08) loses its relative
    precision, as its own small share of the output."""
    if ROUGH == 2:
        hz = 0.5 * z
        return hz + hz * _tanh(hz)
    else:
        return z * sigmoid(z)


@triton.jit
def _softplus_value(x, ROUGH: tl.constexpr):
    """softplus(x) without its slope (the forward); ROUGH ≥ 1 (16-bit inputs): log(1 + v) as
    lg2(1 + v)·ln 2 (one MUFU for the reciprocal and series of ``_softplus``, ~9
    instructions fewer; its absolute error ~10⁻⁷ is below the 16-bit Δ's own rounding for Δ
    down to ~10⁻⁴, relative)."""
    if ROUGH >= 1:
        return tl.maximum(x, 0.0) + _log2(1.0 + exp2(tl.abs(x) * -LOG2E)) * LN2
    else:
        return _softplus(x)[0]


@triton.jit
def _swap_lanes(v, o: tl.constexpr, LANES: tl.constexpr):
    """v from the channel ``c ^ o`` (the lane ``lane ^ o``) for each channel c along axis 0,
    o < LANES: a butterfly shuffle on a GPU, where the channels of a tile run along the lanes;
    a reshape and flip in the interpreter."""
    if FAST:
        bits = v.to(tl.int32, bitcast=True)
        if o == 16:
            out = tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 16, 31, -1;", "=r,r", [bits],
                                            dtype=tl.int32, is_pure=True, pack=1)
        elif o == 8:
            out = tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 8, 31, -1;", "=r,r", [bits],
                                            dtype=tl.int32, is_pure=True, pack=1)
        elif o == 4:
            out = tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 4, 31, -1;", "=r,r", [bits],
                                            dtype=tl.int32, is_pure=True, pack=1)
        elif o == 2:
            out = tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 2, 31, -1;", "=r,r", [bits],
                                            dtype=tl.int32, is_pure=True, pack=1)
        else:
            out = tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 1, 31, -1;", "=r,r", [bits],
                                            dtype=tl.int32, is_pure=True, pack=1)
        return out.to(tl.float32, bitcast=True)
    else:
        W: tl.constexpr = v.shape[0]
        R: tl.constexpr = v.shape[1]
        return tl.reshape(tl.flip(tl.reshape(v, (W // (2 * o), 2, o, R)), 1), (W, R))


@triton.jit
def _channels(pid, NBLK, G, DG, BLOCK_D: tl.constexpr):
    """(sequence, group, channel indices, channel mask) of a program. The sequence index is
    int64 (it offsets the base pointers), the channel indices int32 (per-element offsets)."""
    blk = (pid % NBLK).to(tl.int32)
    gi = (pid // NBLK % G).to(tl.int32)
    bi = pid // (NBLK * G)
    dloc = blk * BLOCK_D + tl.arange(0, BLOCK_D)
    return bi, gi, gi * DG + dloc, dloc < DG


@triton.jit
def _live(mask, t, L):
    """mask, cleared if step t is past the end (compared as a tensor, as the interpreter needs)."""
    return mask & (tl.zeros_like(mask.to(tl.int32)) + t < L)


@triton.jit
def _put(tile, value, at):
    """tile with value where ``at`` (a register ring: ``at`` is known at compile time)."""
    return tl.where(at, value, tile)


@triton.jit
def _take(tile, at, axis: tl.constexpr):
    """The entry of a register ring along ``axis`` where ``at``: −0.0 elsewhere, which adding
    leaves unchanged, so the compiler reads the register instead of summing. The −0.0 is made
    from its bits: a ``-0.0`` literal reached the code as +0.0 (equal to it as a Python float),
    and x + 0.0 is not x (for x = −0.0), so every take of the backward's channel sums kept an
    addition: 152 of a 4-step chunk's 2,583 instructions (offline sm_90a, Triton 3.6)."""
    negative_zero = tl.full(tile.shape, -2147483648, tl.int32).to(tl.float32, bitcast=True)
    return tl.sum(tl.where(at, tile, negative_zero), axis)


@triton.jit
def _store_steps(ptr, tile, dch, sd, ts, sl, mask, L):
    """Store a chunk's (channel, step) tile of a (batch, d, length) tensor at once: after its
    loads, so that the compiler may issue those together (it moves no load past a store)."""
    tl.store(ptr + dch[:, None] * sd + ts * sl, tile.to(ptr.dtype.element_ty), mask=mask & (ts < L))


@triton.jit
def _steps(ptr, dch, sd, ts, sl, mask):
    """A chunk of a (batch, d, length) tensor (ptr at the sequence) as a (channel, step) tile
    in fp32, 0 where masked: the chunk's loads in one operation, so that they are in flight
    together."""
    return tl.load(ptr + dch[:, None] * sd + ts * sl, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _chunk_state(states_ptr, h0_ptr, c, bi, D_all, N, dch, on, sxn, ssb, ssc, ssn, ssd, dn_mask,
                 HAS_H0: tl.constexpr):
    """The state entering chunk c, (channel, state) in fp32: the forward's stored state, the
    initial state (or 0) for the first chunk. Masked loads, no branch: behind a branch the
    compiler waited for the state before issuing the chunk's other loads."""
    prev = tl.maximum(c - 1, 0)
    chunk = dch[:, None] * 0 + c  # c as a tensor, so that the masks below are boolean tensors
    h = tl.load(states_ptr + bi * ssb + prev * ssc + on[None, :] * ssn + dch[:, None] * ssd,
                mask=dn_mask & (chunk > 0), other=0.0).to(tl.float32)
    if HAS_H0:
        h += tl.load(_state_ptrs(h0_ptr, bi, D_all, N, dch, on, sxn), mask=dn_mask & (chunk == 0), other=0.0)
    return h


@triton.jit
def _row(ptr, bi, sb, dch, sd, t, sl, m):
    """One step of a (batch, d, length) tensor over the program's channels, in fp32."""
    return tl.load(ptr + bi * sb + dch * sd + t * sl, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _bc_row(ptr, bi, sb, on, sn, t, sl, L, mn, EVEN_N: tl.constexpr):
    """One step of B or C over the states, in fp32. A step past the end reads the last one
    (its Δ is 0 and its output gradient 0, so the value does not matter, as long as it is
    finite): with as many states as the tile has (EVEN_N) the load needs no mask, and each
    of the 16 per step and thread costs no compare."""
    p = ptr + bi * sb + on * sn + tl.minimum(t, L - 1) * sl
    if EVEN_N:
        return _to_fp32(tl.load(p))
    else:
        return _to_fp32(tl.load(p, mask=mn, other=0.0))


@triton.jit
def _to_fp32(x):
    """x in fp32. On a GPU a thread's bf16 values two to a register (as loaded) by one shift
    and one mask (the compiler moves the upper half down first, a third instruction)."""
    if FAST and x.dtype == tl.bfloat16 and x.numel % 2 == 0:
        bits = tl.inline_asm_elementwise("{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }", "=r,=r,r",
                                         [x], dtype=tl.int32, is_pure=True, pack=2)
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(tl.float32)


@triton.jit
def _step(u_ptr, delta_ptr, B_ptr, bias, t, m, mn, L, bi, dch, on,
          sub, sud, sul, sdb, sdd, sdl, sBb, sBn, sBl, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
          EVEN_N: tl.constexpr, ROUGH: tl.constexpr):
    """A step's dΔ/d(pre-softplus Δ) (1 without softplus; not made with ROUGH ≥ 1, the forward's
    ``_softplus_value``), Δ (0 on masked channels and steps), u and B."""
    raw = _row(delta_ptr, bi, sdb, dch, sdd, t, sdl, m)
    if HAS_BIAS:
        raw += bias
    if SOFTPLUS and ROUGH >= 1:
        dl, slope = _softplus_value(raw, ROUGH), 1.0
    elif SOFTPLUS:
        dl, slope = _softplus(raw)
    else:
        dl, slope = raw, 1.0
    dl = tl.where(m, dl, 0.0)
    uu = _row(u_ptr, bi, sub, dch, sud, t, sul, m)
    return slope, dl, uu, _bc_row(B_ptr, bi, sBb, on, sBn, t, sBl, L, mn, EVEN_N)


@triton.jit
def _params(A_ptr, bias_ptr, D_ptr, dch, md, on, mn, sAd, sAn, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """A·log2(e) as a (channel, state) tile, the delta bias and D of the program's channels."""
    A2 = tl.load(A_ptr + on[None, :] * sAn + dch[:, None] * sAd, mask=md[:, None] & mn[None, :],
                 other=0.0).to(tl.float32) * LOG2E
    bias = tl.load(bias_ptr + dch, mask=md, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
    Dv = tl.load(D_ptr + dch, mask=md, other=0.0).to(tl.float32) if HAS_D else 0.0
    return A2, bias, Dv


@triton.jit
def _state_ptrs(ptr, bi, D_all, N, dch, on, sxn):
    """Pointers to a contiguous (batch, d, n) state as a (channel, state) tile. Its stride
    along the states, 1, comes in unspecialised (``sxn``): a pointer known contiguous along
    the states would make Triton lay the tile's states over the lanes, and with it every
    (channel, state) tile of the kernel."""
    return ptr + bi * D_all * N + (dch[:, None] * N + on[None, :] * sxn)


@triton.jit
def _sum_channels(pB, pC, lane, LANES: tl.constexpr):
    """Sums over each group of LANES channels (axis 0) of two (channel, state) tiles, spread
    over the lanes: entry (c, i) of the (channels, rows) result is the sum of value j =
    (c % LANES) // (LANES // 2^H) · rows + i, where values 0..S−1 are pB's states and S..2S−1
    pC's and H = log2(min(LANES, 2S)) (recursive halving: at each exchange a lane keeps one
    half of its values and the partner lane the other, so every exchange moves half as many
    as the one before). Lanes of a group past 2S hold copies. About one exchange per value
    and thread, against log2(LANES) for a sum that leaves every total in every lane."""
    hi = (lane & (LANES // 2)) != 0
    v = tl.where(hi, pC, pB) + _swap_lanes(tl.where(hi, pB, pC), LANES // 2, LANES)
    for lvl in tl.static_range(2, 6):  # the exchanges at LANES/4, ..., 1 (LANES ≤ 32)
        if (LANES >> lvl) > 0:
            if v.shape[1] > 1:
                v3 = tl.reshape(v, (v.shape[0], 2, v.shape[1] // 2))
                half = tl.arange(0, 2)[None, :, None]
                lo = _take(v3, half == 0, 1)
                up = _take(v3, half == 1, 1)
                hi = (lane & (LANES >> lvl)) != 0
                v = tl.where(hi, up, lo) + _swap_lanes(tl.where(hi, lo, up), LANES >> lvl, LANES)
            else:
                v += _swap_lanes(v, LANES >> lvl, LANES)
    return v


FWD_CONFIGS = configs((4, 1, {"BLOCK_D": 128}), (2, 1, {"BLOCK_D": 64}), (1, 1, {"BLOCK_D": 32}),
                      interpret={"BLOCK_D": 4})
if not INTERPRET:  # fewer registers (fewer of a chunk's loads in flight), more programs per SM
    FWD_CONFIGS += [triton.Config({"BLOCK_D": 128}, num_warps=4, num_stages=1, maxnreg=r) for r in (96, 128)]


@triton.autotune(configs=FWD_CONFIGS,
                 key=["DG", "N", "BLOCK_N", "HAS_Z", "STORE_STATES", "K", "ROUGH"])
@triton.jit(do_not_specialize=STRIDES_FWD)
def _fwd(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, states_ptr, final_ptr,
    L, N, DG, G, NC, sxn,
    sub, sud, sul, sdb, sdd, sdl, sAd, sAn, sBb, sBg, sBn, sBl, sCb, sCg, sCn, sCl,
    szb, szd, szl, sob, sod, sol, ssb, ssc, ssn, ssd,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_STATES: tl.constexpr, STORE_FINAL: tl.constexpr, EVEN_N: tl.constexpr,
    K: tl.constexpr, ROUGH: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    NBLK = tl.cdiv(DG, BLOCK_D)
    bi, gi, dch, md = _channels(pid, NBLK, G, DG, BLOCK_D)
    D_all = G * DG
    on = tl.arange(0, BLOCK_N)
    mn = on < N
    dn_mask = md[:, None] & mn[None, :]
    A2, bias, Dv = _params(A_ptr, bias_ptr, D_ptr, dch, md, on, mn, sAd, sAn, HAS_BIAS, HAS_D)
    if HAS_H0:
        h = tl.load(_state_ptrs(h0_ptr, bi, D_all, N, dch, on, sxn), mask=dn_mask, other=0.0)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    B_ptr += gi * sBg
    C_ptr += gi * sCg
    kcol = tl.arange(0, K)[None, :]  # the step of a chunk as a column
    for c in range(NC):
        if STORE_STATES:  # noqa: SIM102 (a compile-time flag, then a run-time test)
            if c > 0:
                tl.store(states_ptr + bi * ssb + (c - 1) * ssc + on[None, :] * ssn + dch[:, None] * ssd,
                         h.to(states_ptr.dtype.element_ty), mask=dn_mask)
        Y = tl.zeros((BLOCK_D, K), dtype=tl.float32)
        for k in tl.static_range(K):
            t = c * K + k
            m = _live(md, t, L)
            _, dl, uu, Bt = _step(u_ptr, delta_ptr, B_ptr, bias, t, m, mn, L, bi, dch, on,
                                  sub, sud, sul, sdb, sdd, sdl, sBb, sBn, sBl, HAS_BIAS, SOFTPLUS, EVEN_N,
                                  ROUGH)
            Ct = _bc_row(C_ptr, bi, sCb, on, sCn, t, sCl, L, mn, EVEN_N)
            # Masked steps keep the state: Δ = 0 makes the decay 1 and the input 0.
            h = exp2(dl[:, None] * A2) * h + (dl * uu)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], 1)
            if HAS_D:
                y += Dv * uu
            if HAS_Z:
                zz = _row(z_ptr, bi, szb, dch, szd, t, szl, m)
                y *= _silu(zz, ROUGH)
            Y = _put(Y, y[:, None], kcol == k)
        _store_steps(out_ptr + bi * sob, Y, dch, sod, c * K + kcol, sol, md[:, None], L)
    if STORE_FINAL:
        tl.store(_state_ptrs(final_ptr, bi, D_all, N, dch, on, sxn), h, mask=dn_mask)


@triton.jit(do_not_specialize=STRIDES_BWD)
def _bwd(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, states_ptr, dout_ptr, dfin_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dBC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    L, N, DG, G, NC, sxn,
    sub, sud, sul, sdb, sdd, sdl, sAd, sAn, sBb, sBg, sBn, sBl, sCb, sCg, sCn, sCl,
    szb, szd, szl, ssb, ssc, ssn, ssd, syb, syd, syl, sgub, sgud, sgul, sgdb, sgdd, sgdl, sgzb, sgzd, sgzl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_DFIN: tl.constexpr, EVEN_N: tl.constexpr,
    K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, LANES: tl.constexpr,
    SUB: tl.constexpr,
):
    """Input gradients of one (sequence, channel block); B and C's as partial sums over
    groups of LANES channels (dBC_ptr: (batch, groups per sequence, length, 2, BLOCK_N)
    fp32, B's then C's), A's per (sequence, channel) (dA_ptr: (batch, d, N) fp32)."""
    pid = tl.program_id(0).to(tl.int64)
    NBLK = tl.cdiv(DG, BLOCK_D)
    bi, gi, dch, md = _channels(pid, NBLK, G, DG, BLOCK_D)
    D_all = G * DG
    on = tl.arange(0, BLOCK_N)
    mn = on < N
    dn_mask = md[:, None] & mn[None, :]
    A2, bias, Dv = _params(A_ptr, bias_ptr, D_ptr, dch, md, on, mn, sAd, sAn, HAS_BIAS, HAS_D)
    if HAS_DFIN:
        x = tl.load(_state_ptrs(dfin_ptr, bi, D_all, N, dch, on, sxn), mask=dn_mask, other=0.0)
    else:
        x = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dA = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    ring_at = tl.arange(0, SUB)[:, None, None]
    kcol = tl.arange(0, SUB)[None, :]  # the step of a sub-chunk as a column
    B_ptr += gi * sBg
    C_ptr += gi * sCg
    # Where B and C's channel sums go: value j of a lane's (channels, rows) result (see
    # _sum_channels) of a group of LANES channels, in (batch, group, length, 2·BLOCK_N).
    lane = tl.arange(0, BLOCK_D) % LANES
    RS: tl.constexpr = (2 * BLOCK_N) // LANES if 2 * BLOCK_N > LANES else 1
    SPAN: tl.constexpr = LANES // ((2 * BLOCK_N) // RS)  # lanes holding copies of one value
    j = (lane // SPAN)[:, None] * RS + tl.arange(0, RS)[None, :]  # (channels, rows)
    j_mask = (lane % SPAN == 0)[:, None] & (j % BLOCK_N < N)
    part = (pid % (G * NBLK)) * (BLOCK_D // LANES) + tl.arange(0, BLOCK_D) // LANES
    part_ptr = dBC_ptr + ((bi * G * NBLK * (BLOCK_D // LANES) + part) * L)[:, None] * (2 * BLOCK_N) + j
    k3 = tl.arange(0, SUB)[None, :, None]  # the step of a sub-chunk along the middle axis
    kK = tl.arange(0, K)[None, :]  # the step of a chunk as a column
    for cc in range(NC):
        c = NC - 1 - cc
        # The chunk's per-(channel, step) inputs as (channel, step) tiles, loaded at once: one
        # memory round trip per chunk. Loaded step by step, each step's loads were issued after
        # the previous step's math had waited for its own (~5 round trips per chunk).
        ts = c * K + kK
        mt = md[:, None] & (ts < L)
        raw = _steps(delta_ptr + bi * sdb, dch, sdd, ts, sdl, mt)
        UT = _steps(u_ptr + bi * sub, dch, sud, ts, sul, mt)
        DYT = _steps(dout_ptr + bi * syb, dch, syd, ts, syl, mt)
        if HAS_Z:
            ZT = _steps(z_ptr + bi * szb, dch, szd, ts, szl, mt)
        if HAS_BIAS:
            raw += bias[:, None]
        if SOFTPLUS:  # once per chunk (the sub-chunks' recomputes took it up to 3 times a step)
            DLT, SLOPE = _softplus(raw)
        else:
            DLT, SLOPE = raw, 1.0
        DLT = tl.where(mt, DLT, 0.0)
        for s0 in tl.static_range(K - SUB, -1, -SUB):  # the first steps of the sub-chunks, the last first
            h = _chunk_state(states_ptr, h0_ptr, c, bi, D_all, N, dch, on, sxn, ssb, ssc, ssn, ssd, dn_mask,
                             HAS_H0)
            # The steps of the chunk before the sub-chunk: its entering state only.
            for k in tl.static_range(s0):
                t = c * K + k
                dl = _take(DLT, kK == k, 1)
                Bt = _bc_row(B_ptr, bi, sBb, on, sBn, t, sBl, L, mn, EVEN_N)
                h = exp2(dl[:, None] * A2) * h + (dl * _take(UT, kK == k, 1))[:, None] * Bt[None, :]
            # The sub-chunk's entering states again, in a register ring (its outputs are stored
            # at its end, so that nothing is loaded twice).
            ring = tl.zeros((SUB, BLOCK_N, BLOCK_D), dtype=tl.float32)  # (state, channel), as tl.trans gives
            for k in tl.static_range(SUB):
                t = c * K + s0 + k
                dl = _take(DLT, kK == s0 + k, 1)
                Bt = _bc_row(B_ptr, bi, sBb, on, sBn, t, sBl, L, mn, EVEN_N)
                ring = _put(ring, tl.trans(h)[None, :, :], ring_at == k)
                h = exp2(dl[:, None] * A2) * h + (dl * _take(UT, kK == s0 + k, 1))[:, None] * Bt[None, :]
            DU = tl.zeros((BLOCK_D, SUB), dtype=tl.float32)
            DDL = tl.zeros((BLOCK_D, SUB), dtype=tl.float32)
            DZ = tl.zeros((BLOCK_D, SUB), dtype=tl.float32)
            DBC = tl.zeros((BLOCK_D, SUB, RS), dtype=tl.float32)  # (channel, step, rows)
            for kk in tl.static_range(SUB):
                k = SUB - 1 - kk
                t = c * K + s0 + k
                at = kK == s0 + k
                m = _live(md, t, L)
                dl = _take(DLT, at, 1)
                uu = _take(UT, at, 1)
                Bt = _bc_row(B_ptr, bi, sBb, on, sBn, t, sBl, L, mn, EVEN_N)
                Ct = _bc_row(C_ptr, bi, sCb, on, sCn, t, sCl, L, mn, EVEN_N)
                a = exp2(dl[:, None] * A2)
                dlu = dl * uu
                ahp = a * tl.trans(_take(ring, ring_at == k, 0))  # a_t h_{t−1}
                ht = ahp + dlu[:, None] * Bt[None, :]
                dy = _take(DYT, at, 1)
                if HAS_Z:
                    zz = _take(ZT, at, 1)
                    y = tl.sum(ht * Ct[None, :], 1)
                    if HAS_D:
                        y += Dv * uu
                    sg = sigmoid(zz)
                    DZ = _put(DZ, (dy * y * sg * (1.0 + zz * (1.0 - sg)))[:, None], kcol == k)
                    dy = dy * zz * sg
                r = x + Ct[None, :] * dy[:, None]  # the gradient of h_t
                sums = _sum_channels(r * dlu[:, None], ht * dy[:, None], lane[:, None], LANES)
                DBC = _put(DBC, sums[:, None, :], k3 == k)
                rB = tl.sum(r * Bt[None, :], 1)
                rah = r * ahp
                dA += rah * dl[:, None]
                x = a * r  # into the previous step
                ddl = tl.sum(rah * A2, 1) * LN2 + uu * rB
                du = dl * rB
                if HAS_D:
                    du += Dv * dy
                    dD += dy * uu
                DU = _put(DU, du[:, None], kcol == k)
                if SOFTPLUS:
                    ddl *= _take(SLOPE, at, 1)
                ddl = tl.where(m, ddl, 0.0)
                dbias += ddl
                DDL = _put(DDL, ddl[:, None], kcol == k)
            tsub = c * K + s0 + kcol
            _store_steps(du_ptr + bi * sgub, DU, dch, sgud, tsub, sgul, md[:, None], L)
            _store_steps(ddelta_ptr + bi * sgdb, DDL, dch, sgdd, tsub, sgdl, md[:, None], L)
            if HAS_Z:
                _store_steps(dz_ptr + bi * sgzb, DZ, dch, sgzd, tsub, sgzl, md[:, None], L)
            for k in tl.static_range(SUB):
                t = c * K + s0 + k
                tl.store(part_ptr + t * (2 * BLOCK_N), _take(DBC, k3 == k, 1), mask=_live(j_mask, t, L))
    tl.store(_state_ptrs(dA_ptr, bi, D_all, N, dch, on, sxn), dA, mask=dn_mask)
    if HAS_D:
        tl.store(dD_ptr + bi * D_all + dch, dD, mask=md)
    if HAS_BIAS:
        tl.store(dbias_ptr + bi * D_all + dch, dbias, mask=md)
    if HAS_H0:
        tl.store(_state_ptrs(dh0_ptr, bi, D_all, N, dch, on, sxn), x, mask=dn_mask)


def _as_groups(t: torch.Tensor, name: str) -> torch.Tensor:
    """B or C as (batch, groups, n, length): a 3-D (batch, n, length) tensor is one group."""
    if t.dim() == 3:
        return t.unsqueeze(1)
    if t.dim() == 4:
        return t
    raise ValueError(f"selective_scan: {name} must be (batch, n, length) or (batch, groups, n, length), "
                     f"got shape {tuple(t.shape)} (input-independent B/C are not supported)")


def _empty_in_layout(t: torch.Tensor) -> torch.Tensor:
    """An empty (batch, d, length) tensor like t, channel-last when t is."""
    if t.stride(1) == 1 and t.shape[1] > 1:
        return t.new_empty(t.shape[0], t.shape[2], t.shape[1]).transpose(1, 2)
    return t.new_empty(t.shape)


def _along(reverse: bool, *tensors: torch.Tensor) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Pointers and strides of (..., length) tensors for kernels that walk the steps t = 0,
    1, ...: the tensors as they are, or with ``reverse`` views starting at their last step
    with the step stride negated, so that the kernels' step t is step L − 1 − t: the scan of
    the reversed sequences without flipped copies."""
    if not reverse:
        return list(tensors), [list(t.stride()) for t in tensors]
    return [t[..., -1:] for t in tensors], [[*t.stride()[:-1], -t.stride(-1)] for t in tensors]


def _state_strides(states: torch.Tensor) -> list[int]:
    """Strides of the stored (batch, chunk, n, d) states (zeros for the placeholder)."""
    return list(states.stride()) if states.dim() == 4 else [0, 0, 0, 0]


def check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state) -> tuple[int, int, int, int, int]:
    """Validate the selective_scan_fn layout; returns (batch, d, length, n, groups)."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, d, length), got shape {tuple(u.shape)}")
    b, d, length = u.shape
    if A.dim() != 2 or A.shape[0] != d or A.is_complex():
        raise ValueError(f"selective_scan: A must be a real (d, n) = ({d}, n) tensor, got {tuple(A.shape)}")
    n = A.shape[1]
    Bg, Cg = _as_groups(B, "B"), _as_groups(C, "C")
    g = Bg.shape[1]
    if delta.shape != u.shape or (z is not None and z.shape != u.shape):
        raise ValueError(f"selective_scan: delta and z must have u's shape {tuple(u.shape)}")
    if Bg.shape != (b, g, n, length) or Cg.shape != Bg.shape:
        raise ValueError(f"selective_scan: B and C must be ({b}, [groups,] {n}, {length}), "
                         f"got {tuple(B.shape)} and {tuple(C.shape)}")
    if d % g:
        raise ValueError(f"selective_scan: d ({d}) must be a multiple of the groups of B/C ({g})")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and v.shape != (d,):
            raise ValueError(f"selective_scan: {name} must have shape ({d},), got {tuple(v.shape)}")
    if initial_state is not None and initial_state.shape != (b, d, n):
        raise ValueError(f"selective_scan: initial_state must have shape {(b, d, n)}, "
                         f"got {tuple(initial_state.shape)}")
    if length == 0:
        raise ValueError("selective_scan needs at least one time step")
    return b, d, length, n, g


CHUNK = 4
"""Steps per chunk: the spacing of the states stored for the backward (its register ring is
the sub-chunk, ``SUB`` of :func:`_bwd_config`). 4: with 8 the forward spills at its register
cap, with 2 the stored states double (+49 GB in a training step); tools/sweep_selective_scan.py
measured them (H200: docs/benchmarks.md)."""


ROUGH_16BIT = 2
"""16-bit inputs: the forward's softplus by ``lg2.approx`` (1, ``_softplus_value``) and its
gate too by ``tanh.approx`` (2, ``_silu``); 0: as for fp32. On the H200 the time axis's
inference forward takes 1.948 / 1.872 / 1.816 ms at 0 / 1 / 2 (docs/benchmarks.md)."""


def _bwd_config(n: int) -> dict:
    """Launch settings of the backward. Fixed, not autotuned: B and C's partial sums are per
    channel group. One warp of 32 channels, a thread each; the chunk's steps in sub-chunks
    of ``SUB`` (its register ring; docs/benchmarks.md has the swept variants). The
    interpreter runs sub-chunks of 2 so that CI covers the recompute from the chunk start."""
    if INTERPRET:
        return dict(BLOCK_D=4, num_warps=1, SUB=2)
    return dict(BLOCK_D=32, num_warps=1, SUB=2)


class SelectiveScan(torch.autograd.Function):
    """out (and the final state) of the selective scan, with the gradients of every input."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final,
                backward: bool, reverse: bool):
        b, d, length, n, g = check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
        Bg, Cg = _as_groups(B, "B"), _as_groups(C, "C")
        if initial_state is not None:
            initial_state = initial_state.contiguous()  # the kernels read contiguous states
        nc = triton.cdiv(length, CHUNK)
        dummy = A
        store_states = backward and nc > 1
        # The states the backward restarts from, (batch, chunk, n, d): bf16 for bf16 inputs
        # (half the memory; the gradients stay within bf16 rounding), else fp32 (fp16's
        # range is too short).
        store = torch.bfloat16 if u.dtype == torch.bfloat16 else torch.float32
        states = u.new_empty(b, nc - 1, n, d, dtype=store) if store_states else dummy
        final = u.new_empty(b, d, n, dtype=torch.float32) if return_final else None
        out = _empty_in_layout(u)  # the output in the input's layout
        common = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                      SOFTPLUS=bool(delta_softplus), HAS_H0=initial_state is not None,
                      K=CHUNK, BLOCK_N=block(n, 1), EVEN_N=block(n, 1) == n)
        zz = z if z is not None else u
        dg = d // g
        (up, dp, Bp, Cp, zp, op), (su, sd, sB, sC, sz, so) = _along(reverse, u, delta, Bg, Cg, zz, out)
        _fwd[lambda meta: (b * g * triton.cdiv(dg, meta["BLOCK_D"]),)](
            up, dp, A, Bp, Cp, D if D is not None else dummy, zp,
            delta_bias if delta_bias is not None else dummy,
            initial_state if initial_state is not None else dummy, op,
            states, final if final is not None else dummy,
            length, n, dg, g, nc, 1, *su, *sd, *A.stride(), *sB, *sC, *sz, *so, *_state_strides(states),
            STORE_STATES=store_states, STORE_FINAL=return_final,
            ROUGH=ROUGH_16BIT if u.dtype != torch.float32 else 0, **common)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, states)
        ctx.common, ctx.reverse = common, reverse
        ctx.set_materialize_grads(False)
        return (out, final) if return_final else out

    @staticmethod
    def backward(ctx, dout, dfinal=None):
        u, delta, A, B, C, D, z, delta_bias, initial_state, states = ctx.saved_tensors
        b, d, length = u.shape
        n = A.shape[1]
        Bg, Cg = _as_groups(B, "B"), _as_groups(C, "C")
        g = Bg.shape[1]
        dg = d // g
        nc = triton.cdiv(length, ctx.common["K"])
        dummy = A
        if dout is None:
            dout = torch.zeros_like(u)
        launch = _bwd_config(n)
        programs = g * triton.cdiv(dg, launch["BLOCK_D"])  # per sequence
        du, ddelta = _empty_in_layout(u), _empty_in_layout(delta)
        dz = _empty_in_layout(z) if z is not None else None
        bn = ctx.common["BLOCK_N"]
        lanes = min(launch["BLOCK_D"], 32)
        groups = programs * (launch["BLOCK_D"] // lanes)  # channel groups summed in-kernel, per sequence
        dBC_part = u.new_empty(b, groups, length, 2, bn, dtype=torch.float32)
        dA_part = u.new_empty(b, d, n, dtype=torch.float32)
        dD_part = u.new_empty(b, d, dtype=torch.float32) if D is not None else None
        dbias_part = u.new_empty(b, d, dtype=torch.float32) if delta_bias is not None else None
        dh0 = u.new_empty(b, d, n, dtype=torch.float32) if initial_state is not None else None
        zz = z if z is not None else u
        gz = dz if dz is not None else du
        ptrs, strides = _along(ctx.reverse, u, delta, Bg, Cg, zz, dout, du, ddelta, gz)
        up, dp, Bp, Cp, zp, yp, dup, ddp, gzp = ptrs
        su, sd, sB, sC, sz, sy, sdu, sdd, sgz = strides
        _bwd[(b * programs,)](
            up, dp, A, Bp, Cp, D if D is not None else dummy, zp,
            delta_bias if delta_bias is not None else dummy,
            initial_state if initial_state is not None else dummy,
            states, yp, dfinal.contiguous() if dfinal is not None else dummy,
            dup, ddp, gzp, dBC_part, dA_part,
            dD_part if dD_part is not None else dummy, dbias_part if dbias_part is not None else dummy,
            dh0 if dh0 is not None else dummy,
            length, n, dg, g, nc, 1, *su, *sd, *A.stride(), *sB, *sC, *sz, *_state_strides(states),
            *sy, *sdu, *sdd, *sgz,
            HAS_DFIN=dfinal is not None, LANES=lanes, **launch, **ctx.common)
        dBC = dBC_part.view(b, g, groups // g, length, 2, bn)[..., :n].sum(2)  # (b, g, L, 2, n)
        if ctx.reverse:
            dBC = dBC.flip(2)  # written at the kernel's steps: back to the sequence's

        def grad_of(which: int, like: torch.Tensor) -> torch.Tensor:
            return dBC[..., which, :].transpose(-1, -2).reshape(like.shape).to(like.dtype)

        return (
            du, ddelta, dA_part.sum(0).to(A.dtype), grad_of(0, B), grad_of(1, C),
            dD_part.sum(0).to(D.dtype) if D is not None else None,
            dz,
            dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
            None,
            dh0.to(initial_state.dtype) if dh0 is not None else None,
            None,
            None,
            None,
        )


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, initial_state=None, return_final_state=False, reverse=False):
    """Triton selective scan with the contract of :func:`bsmamba2.ops.reference.selective_scan`;
    ``reverse`` as :func:`bsmamba2.ops.selective_scan`'s (the kernels walk the steps backwards)."""
    return SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                               bool(return_last_state or return_final_state),
                               backward_ahead(u, delta, A, B, C, D, z, delta_bias, initial_state),
                               bool(reverse))
