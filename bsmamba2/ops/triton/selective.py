"""Mamba-1 selective scan in Triton: forward and backward, delta bias, softplus and SiLU gate fused.

Per channel d and state n the scan is ``h_t = exp(Δ_t A_dn) h_{t−1} + Δ_t B_tn u_t`` and
``y_t = Σ_n C_tn h_t + D u_t``, then ``y ⊙ silu(z)``. Every (channel, state) pair has its
own decay, so unlike SSD there is no matrix form: the work is one exponential per (step,
channel, state), the bound of the kernel.

Forward: one program per (sequence, block of channels of one group) walks the sequence in
tiles of ``TILE`` steps, the (channel, state) state carried across tiles in fp32 registers.
Inside a tile the decays and inputs of all (step, channel, state) are computed at once and
``tl.associative_scan`` runs the linear recurrence along the steps. With gradients
recorded the state entering every tile but the first is stored for the backward.

Backward: the same programs walk the tiles in reverse. Each tile restarts from its stored
state, recomputes its states (the same scan), and runs the reverse recurrence of the state
gradient ``r_t = C_t dy_t + a_{t+1} r_{t+1}`` as a reverse associative scan over triples
(the coefficient a_{t+1} belongs to the next step, and the triple carries it, so no tensor
is shifted). The parameter gradients (A, D, delta bias) are per-program partial sums, B and
C's gradients per-(program, step) partial sums over the block's channels; the host adds
them up (no atomics).

The tensors keep mamba_ssm's ``selective_scan_fn`` layout, (batch, d, length), with any
strides: the model hands in channel-last views, read and written as they are.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bsmamba2.ops.triton.common import INTERPRET, block, configs, sigmoid, softplus

TILE = 8 if INTERPRET else 16
"""Steps per tile (also the spacing of the states stored for the backward): 16 steps × 16
channels × 16 states keep the backward's ten live tiles in registers. The interpreter runs a
scan one element at a time, so it gets small tiles: less padding to scan."""

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _recurrence(a1, b1, a2, b2):
    """Compose h ↦ a1 h + b1 (earlier) with h ↦ a2 h + b2 (later)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _reverse_recurrence(q1, p1, f1, q2, p2, f2):
    """Segments of the reverse recurrence r_t = g_t + a_{t+1} r_{t+1}; (q1, p1, f1) is the
    later segment, (q2, p2, f2) the earlier one. A segment [s..e] maps the gradient flowing
    in from after it, x, to its first r: r_s = q + p·x, with f = a_s (its first decay)."""
    return q2 + p2 * f1 * q1, p2 * f1 * p1, f2


@triton.jit
def _tile_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, bias, A2, t, dch, on, mtd, mtn,
                 sub, sud, sul, sdb, sdd, sdl, sBb, sBn, sBl, sCb, sCn, sCl, bi,
                 HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """A tile's u, pre-softplus Δ, Δ (0 on masked lanes), B, C and the decays exp(Δ A)."""
    raw = tl.load(delta_ptr + bi * sdb + dch[None, :] * sdd + t[:, None] * sdl, mask=mtd,
                  other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += bias[None, :]
    dl = softplus(raw) if SOFTPLUS else raw
    dl = tl.where(mtd, dl, 0.0)
    uu = tl.load(u_ptr + bi * sub + dch[None, :] * sud + t[:, None] * sul, mask=mtd,
                 other=0.0).to(tl.float32)
    Bt = tl.load(B_ptr + bi * sBb + on[None, :] * sBn + t[:, None] * sBl, mask=mtn, other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + bi * sCb + on[None, :] * sCn + t[:, None] * sCl, mask=mtn, other=0.0).to(tl.float32)
    a = tl.exp2(dl[:, :, None] * A2[None, :, :])
    b = (dl * uu)[:, :, None] * Bt[:, None, :]
    return raw, dl, uu, Bt, Ct, a, b


@triton.jit
def _channels(pid, NBLK, G, DG, BLOCK_D: tl.constexpr):
    """(sequence, group, channel indices, channel mask) of a program."""
    blk = pid % NBLK
    gi = pid // NBLK % G
    bi = pid // (NBLK * G)
    dloc = blk * BLOCK_D + tl.arange(0, BLOCK_D)
    return bi, gi, gi * DG + dloc, dloc < DG


@triton.autotune(configs=configs((4, 1, {"BLOCK_D": 16}), (8, 1, {"BLOCK_D": 32}), (4, 1, {"BLOCK_D": 8}),
                                 interpret={"BLOCK_D": 4}),
                 key=["DG", "N", "BLOCK_N", "HAS_Z", "STORE_STATES"])
@triton.jit
def _fwd(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, states_ptr, final_ptr,
    L, N, DG, G, NT,
    sub, sud, sul, sdb, sdd, sdl, sAd, sAn, sBb, sBg, sBn, sBl, sCb, sCg, sCn, sCl,
    szb, szd, szl, sob, sod, sol,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_STATES: tl.constexpr, STORE_FINAL: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    NBLK = tl.cdiv(DG, BLOCK_D)
    bi, gi, dch, md = _channels(pid, NBLK, G, DG, BLOCK_D)
    D_all = G * DG
    ot = tl.arange(0, BLOCK_T)
    on = tl.arange(0, BLOCK_N)
    mn = on < N
    dn_mask = md[:, None] & mn[None, :]
    A = tl.load(A_ptr + dch[:, None] * sAd + on[None, :] * sAn, mask=dn_mask, other=0.0).to(tl.float32)
    A2 = A * LOG2E
    bias = tl.load(bias_ptr + dch, mask=md, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
    Dv = tl.load(D_ptr + dch, mask=md, other=0.0).to(tl.float32) if HAS_D else 0.0
    state_off = (bi * D_all + dch[:, None]) * N + on[None, :]
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=dn_mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    B_ptr += gi * sBg
    C_ptr += gi * sCg
    for c in range(NT):
        t = c * BLOCK_T + ot
        mt = t < L
        mtd = mt[:, None] & md[None, :]
        mtn = mt[:, None] & mn[None, :]
        _, _, uu, _, Ct, a, b = _tile_inputs(
            u_ptr, delta_ptr, B_ptr, C_ptr, bias, A2, t, dch, on, mtd, mtn,
            sub, sud, sul, sdb, sdd, sdl, sBb, sBn, sBl, sCb, sCn, sCl, bi, HAS_BIAS, SOFTPLUS)
        if STORE_STATES:  # noqa: SIM102 (a compile-time flag, then a run-time test)
            if c > 0:
                tl.store(states_ptr + ((bi * D_all + dch[:, None]) * (NT - 1) + c - 1) * N + on[None, :],
                         h.to(states_ptr.dtype.element_ty), mask=dn_mask)
        pa, pb = tl.associative_scan((a, b), 0, _recurrence)
        hs = pa * h[None, :, :] + pb
        y = tl.sum(hs * Ct[:, None, :], 2)
        if HAS_D:
            y += Dv[None, :] * uu
        if HAS_Z:
            zz = tl.load(z_ptr + bi * szb + dch[None, :] * szd + t[:, None] * szl, mask=mtd,
                         other=0.0).to(tl.float32)
            y *= zz * sigmoid(zz)
        tl.store(out_ptr + bi * sob + dch[None, :] * sod + t[:, None] * sol, y.to(out_ptr.dtype.element_ty),
                 mask=mtd)
        # Masked steps keep the state (a = 1, b = 0): the last row is the state leaving the tile.
        h = tl.sum(tl.where((ot == BLOCK_T - 1)[:, None, None], hs, 0.0), 0)
    if STORE_FINAL:
        tl.store(final_ptr + state_off, h, mask=dn_mask)


@triton.autotune(configs=configs((8, 1), (4, 1)), key=["DG", "N", "BLOCK_N", "BLOCK_D", "HAS_Z"])
# ptxas (sm_90a, bf16, 16 × 16 × 16 tiles): 238 registers and no spills on 8 warps; 4 warps
# spill ~110 bytes.
@triton.jit
def _bwd(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, states_ptr, dout_ptr, dfin_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    L, N, DG, G, NT,
    sub, sud, sul, sdb, sdd, sdl, sAd, sAn, sBb, sBg, sBn, sBl, sCb, sCg, sCn, sCl,
    szb, szd, szl, syb, syd, syl, sgub, sgud, sgul, sgdb, sgdd, sgdl, sgzb, sgzd, sgzl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_DFIN: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Input gradients of one (sequence, channel block); B and C's as partial sums over the
    block (dB_ptr / dC_ptr: (batch, programs per sequence, length, N) fp32)."""
    pid = tl.program_id(0).to(tl.int64)
    NBLK = tl.cdiv(DG, BLOCK_D)
    bi, gi, dch, md = _channels(pid, NBLK, G, DG, BLOCK_D)
    D_all = G * DG
    ot = tl.arange(0, BLOCK_T)
    on = tl.arange(0, BLOCK_N)
    mn = on < N
    dn_mask = md[:, None] & mn[None, :]
    A = tl.load(A_ptr + dch[:, None] * sAd + on[None, :] * sAn, mask=dn_mask, other=0.0).to(tl.float32)
    A2 = A * LOG2E
    bias = tl.load(bias_ptr + dch, mask=md, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
    Dv = tl.load(D_ptr + dch, mask=md, other=0.0).to(tl.float32) if HAS_D else 0.0
    state_off = (bi * D_all + dch[:, None]) * N + on[None, :]
    if HAS_DFIN:
        x = tl.load(dfin_ptr + state_off, mask=dn_mask, other=0.0).to(tl.float32)
    else:
        x = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dA = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    ones = tl.full((BLOCK_T, BLOCK_D, BLOCK_N), 1.0, tl.float32)
    B_ptr += gi * sBg
    C_ptr += gi * sCg
    part = pid % (G * NBLK)  # the program's index within its sequence
    for cc in range(NT):
        c = NT - 1 - cc
        t = c * BLOCK_T + ot
        mt = t < L
        mtd = mt[:, None] & md[None, :]
        mtn = mt[:, None] & mn[None, :]
        if c > 0:
            h = tl.load(states_ptr + ((bi * D_all + dch[:, None]) * (NT - 1) + c - 1) * N + on[None, :],
                        mask=dn_mask, other=0.0).to(tl.float32)
        elif HAS_H0:
            h = tl.load(h0_ptr + state_off, mask=dn_mask, other=0.0).to(tl.float32)
        else:
            h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        raw, dl, uu, Bt, Ct, a, b = _tile_inputs(
            u_ptr, delta_ptr, B_ptr, C_ptr, bias, A2, t, dch, on, mtd, mtn,
            sub, sud, sul, sdb, sdd, sdl, sBb, sBn, sBl, sCb, sCn, sCl, bi, HAS_BIAS, SOFTPLUS)
        pa, pb = tl.associative_scan((a, b), 0, _recurrence)
        hs = pa * h[None, :, :] + pb
        dy = tl.load(dout_ptr + bi * syb + dch[None, :] * syd + t[:, None] * syl, mask=mtd,
                     other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + bi * szb + dch[None, :] * szd + t[:, None] * szl, mask=mtd,
                         other=0.0).to(tl.float32)
            y = tl.sum(hs * Ct[:, None, :], 2)
            if HAS_D:
                y += Dv[None, :] * uu
            sg = sigmoid(zz)
            dz = dy * y * sg * (1.0 + zz * (1.0 - sg))
            tl.store(dz_ptr + bi * sgzb + dch[None, :] * sgzd + t[:, None] * sgzl,
                     dz.to(dz_ptr.dtype.element_ty), mask=mtd)
            dy = dy * zz * sg
        # Gradient of each state: the reverse recurrence, plus what flows in from later tiles.
        g = dy[:, :, None] * Ct[:, None, :]
        q, p, _ = tl.associative_scan((g, ones, a), 0, _reverse_recurrence, reverse=True)
        r = q + p * x[None, :, :]
        x = tl.sum(tl.where((ot == 0)[:, None, None], a * r, 0.0), 0)  # into the previous tile
        hm = hs - b  # a_t h_{t−1}
        rB = tl.sum(r * Bt[:, None, :], 2)
        rh = r * hm
        ddl = tl.sum(rh * A[None, :, :], 2) + uu * rB
        du = dl * rB
        if HAS_D:
            du += Dv[None, :] * dy
            dD += tl.sum(dy * uu, 0)
        tl.store(du_ptr + bi * sgub + dch[None, :] * sgud + t[:, None] * sgul, du.to(du_ptr.dtype.element_ty),
                 mask=mtd)
        part_off = ((bi * G * NBLK + part) * L + t[:, None]) * N + on[None, :]
        tl.store(dB_ptr + part_off, tl.sum(r * (dl * uu)[:, :, None], 1), mask=mtn)
        tl.store(dC_ptr + part_off, tl.sum(dy[:, :, None] * hs, 1), mask=mtn)
        dA += tl.sum(rh * dl[:, :, None], 0)
        draw = ddl * sigmoid(raw) if SOFTPLUS else ddl
        draw = tl.where(mtd, draw, 0.0)
        dbias += tl.sum(draw, 0)
        tl.store(ddelta_ptr + bi * sgdb + dch[None, :] * sgdd + t[:, None] * sgdl,
                 draw.to(ddelta_ptr.dtype.element_ty), mask=mtd)
    tl.store(dA_ptr + state_off, dA, mask=dn_mask)
    if HAS_D:
        tl.store(dD_ptr + bi * D_all + dch, dD, mask=md)
    if HAS_BIAS:
        tl.store(dbias_ptr + bi * D_all + dch, dbias, mask=md)
    if HAS_H0:
        tl.store(dh0_ptr + state_off, x, mask=dn_mask)


def _bwd_block(n: int) -> int:
    """Channels per backward program: the tiles of 8 live (step, channel, state) tensors
    stay in registers. Fixed, not autotuned: B and C's partial sums are per channel block."""
    if INTERPRET:
        return 4
    return 16 if block(n, 1) <= 16 else 8


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


def _strides(*tensors: torch.Tensor) -> list[int]:
    return [s for t in tensors for s in t.stride()]


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


class SelectiveScan(torch.autograd.Function):
    """out (and the final state) of the selective scan, with the gradients of every input."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final):
        b, d, length, n, g = check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
        Bg, Cg = _as_groups(B, "B"), _as_groups(C, "C")
        nt = triton.cdiv(length, TILE)
        needs_grad = ctx.needs_input_grad is not None and any(ctx.needs_input_grad)
        dummy = A
        store_states = needs_grad and nt > 1
        # The states the backward restarts from: bf16 for bf16 inputs (half the memory; the
        # gradients stay within bf16 rounding), else fp32 (fp16's range is too short).
        store = torch.bfloat16 if u.dtype == torch.bfloat16 else torch.float32
        states = u.new_empty(b, d, nt - 1, n, dtype=store) if store_states else None
        final = u.new_empty(b, d, n, dtype=torch.float32) if return_final else None
        out = _empty_in_layout(u)  # the output in the input's layout
        common = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                      SOFTPLUS=bool(delta_softplus), HAS_H0=initial_state is not None,
                      BLOCK_T=TILE, BLOCK_N=block(n, 1))
        zz = z if z is not None else u
        dg = d // g
        _fwd[lambda meta: (b * g * triton.cdiv(dg, meta["BLOCK_D"]),)](
            u, delta, A, Bg, Cg, D if D is not None else dummy, zz,
            delta_bias if delta_bias is not None else dummy,
            initial_state if initial_state is not None else dummy, out,
            states if states is not None else dummy, final if final is not None else dummy,
            length, n, dg, g, nt, *_strides(u, delta, A, Bg, Cg, zz, out),
            STORE_STATES=store_states, STORE_FINAL=return_final, **common)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, states)
        ctx.common = common
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
        nt = triton.cdiv(length, TILE)
        dummy = A
        if dout is None:
            dout = torch.zeros_like(u)
        block_d = _bwd_block(n)
        programs = g * triton.cdiv(dg, block_d)  # per sequence
        du, ddelta = _empty_in_layout(u), _empty_in_layout(delta)
        dz = _empty_in_layout(z) if z is not None else None
        dB_part = u.new_empty(b, programs, length, n, dtype=torch.float32)
        dC_part = torch.empty_like(dB_part)
        dA_part = u.new_empty(b, d, n, dtype=torch.float32)
        dD_part = u.new_empty(b, d, dtype=torch.float32) if D is not None else None
        dbias_part = u.new_empty(b, d, dtype=torch.float32) if delta_bias is not None else None
        dh0 = u.new_empty(b, d, n, dtype=torch.float32) if initial_state is not None else None
        zz = z if z is not None else u
        gz = dz if dz is not None else du
        opt = [t if t is not None else dummy for t in (D, zz, delta_bias, initial_state, states)]
        _bwd[(b * programs,)](
            u, delta, A, Bg, Cg, *opt, dout, dfinal.contiguous() if dfinal is not None else dummy,
            du, ddelta, gz, dB_part, dC_part, dA_part,
            dD_part if dD_part is not None else dummy, dbias_part if dbias_part is not None else dummy,
            dh0 if dh0 is not None else dummy,
            length, n, dg, g, nt, *_strides(u, delta, A, Bg, Cg, zz, dout, du, ddelta, gz),
            HAS_DFIN=dfinal is not None, BLOCK_D=block_d, **ctx.common)

        def group_sum(part: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            total = part.view(b, g, programs // g, length, n).sum(2).transpose(-1, -2)  # (b, g, n, L)
            return total.reshape(like.shape).to(like.dtype)

        return (
            du, ddelta, dA_part.sum(0).to(A.dtype), group_sum(dB_part, B), group_sum(dC_part, C),
            dD_part.sum(0).to(D.dtype) if D is not None else None,
            dz,
            dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
            None,
            dh0.to(initial_state.dtype) if dh0 is not None else None,
            None,
        )


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, initial_state=None, return_final_state=False):
    """Triton selective scan with the contract of :func:`bsmamba2.ops.reference.selective_scan`."""
    return SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                               bool(return_last_state or return_final_state))
