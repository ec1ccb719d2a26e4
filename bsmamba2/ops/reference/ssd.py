"""The SSD scan (Mamba-2's selective scan) in PyTorch: the oracle of the Triton kernel.

It is written in Mamba-2's chunked matrix form: within a chunk the recurrence is an
"attention" product masked by the decay matrix, and chunks exchange their states through
one small matrix product, so there is no Python loop over time steps.
:func:`ssd_scan_sequential` is the float64 step-by-step recurrence every scan is tested
against.
"""

from __future__ import annotations

import torch

from bsmamba2.ops.reference.common import compute_dtype, eager_inference, prepare_dt

DEFAULT_CHUNK = 64


def _padded(t: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """``t`` (b, l, ...) in ``dtype``, zero-padded along dim 1 to ``length``: one pass, not two."""
    if t.shape[1] == length:
        return t.to(dtype)
    out = t.new_empty((t.shape[0], length, *t.shape[2:]), dtype=dtype)
    out[:, t.shape[1] :].zero_()
    out[:, : t.shape[1]] = t
    return out


def _matmul_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype matrix products run in: autocast's lower precision when it is on, else ``dtype``."""
    if dtype != torch.float64 and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


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
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan. Shapes: x (b,l,h,p), dt (b,l,h), A (h), B/C (b,l,g,n), D (h).

    Computes H_t = exp(Δ_t A) H_{t-1} + Δ_t x_t ⊗ B_t and y_t = H_t C_t + D x_t per head,
    with H_{-1} = initial_state (b,h,p,n) or zeros. Returns y (b,l,h,p) and, when asked,
    the final state (b,h,p,n) in the compute dtype.

    ``chunk_size`` is the reference's own knob (not part of the op's contract: the Triton
    kernel picks its chunking itself); it changes only rounding.

    Within a chunk of q steps: y_t = Σ_{s<=t} (C_t·B_s) exp(S_t − S_s) Δ_s x_s (S = cumulative
    Δ·A), one batched matrix product for all chunks and heads. Across chunks only the
    (h, p, n) states travel, in a loop over chunks (not time steps) that never holds more
    than one state per sequence; a sequence that fits in one chunk skips it entirely.
    The activations are 50–250 MB on the paper model and the CPU path is bound by passes
    over them, so in eager inference (:func:`eager_inference`) the big temporaries are
    updated in place and results written straight into the layout and dtype needed next.
    """
    b, length, h, p = x.shape
    g, n = B.shape[-2:]
    if h % g:
        raise ValueError(f"nheads ({h}) must be a multiple of ngroups ({g})")
    hg = h // g
    inplace = eager_inference(x, dt, A, B, C, D, dt_bias, initial_state)
    cdt = compute_dtype(x)
    q = min(length, chunk_size)
    nc = -(-length // q)
    # Δ = 0 in the padding: no decay and no input, the state passes through.
    delta = _padded(prepare_dt(dt, dt_bias, dt_softplus, cdt), nc * q, cdt).view(b, nc, q, h)
    xs = _padded(x, nc * q, cdt).view(b, nc, q, h, p)
    Bc, Cc = (_padded(t, nc * q, cdt).view(b, nc, q, g, n).permute(0, 3, 1, 2, 4) for t in (B, C))
    a_cs = (delta * A.to(cdt)).cumsum(2)  # S_t within each chunk, (b,nc,q,h)

    # Intra-chunk part, per head: (C_t·B_s) exp(S_t − S_s) for s <= t, times Δ_s x_s.
    cb = (Cc @ Bc.transpose(-1, -2)).unsqueeze(2)  # (b,g,1,nc,q,q), shared by a group's heads
    cs = a_cs.permute(0, 3, 1, 2)  # (b,h,nc,q)
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    seg = (cs.unsqueeze(-1) - cs.unsqueeze(-2)).masked_fill_(~causal, float("-inf"))
    xdt_parts = (xs.permute(0, 3, 1, 2, 4), delta.permute(0, 3, 1, 2).unsqueeze(-1))
    if inplace:
        # Both operands of the product written once, in its layout and in the dtype autocast
        # would cast them to (bf16 on a CPU under autocast), instead of converted afterwards.
        mm_dtype = _matmul_dtype(x.device.type, cdt)
        scores = torch.mul(seg.exp_().view(b, g, hg, nc, q, q), cb,
                           out=seg.new_empty(seg.shape, dtype=mm_dtype).view(b, g, hg, nc, q, q))
        xdt = torch.mul(*xdt_parts, out=xs.new_empty(b, h, nc, q, p, dtype=mm_dtype))
    else:
        scores = torch.exp(seg).view(b, g, hg, nc, q, q) * cb
        xdt = xdt_parts[0] * xdt_parts[1]
    y = scores.view(b, h, nc, q, q) @ xdt  # (b,h,nc,q,p)

    final = None
    if nc > 1 or initial_state is not None or return_final_state:
        y, final = _inter_chunk(y, xs, delta, a_cs, Bc, Cc, initial_state)
    y = y.permute(0, 2, 3, 1, 4).reshape(b, nc * q, h, p)[:, :length]
    if inplace:  # the skip term, the (b,l,h,p) layout and the cast in one pass
        out = x.new_empty(b, length, h, p)
        if D is None:
            y = out.copy_(y)
        else:
            y = torch.addcmul(y, xs.view(b, nc * q, h, p)[:, :length], D.to(cdt).view(h, 1), out=out)
    else:
        if D is not None:
            y = y + xs.view(b, nc * q, h, p)[:, :length] * D.to(cdt).view(h, 1)
        y = y.to(x.dtype)
    return (y, final) if return_final_state else y


def _inter_chunk(
    y: torch.Tensor,
    xs: torch.Tensor,
    delta: torch.Tensor,
    a_cs: torch.Tensor,
    Bc: torch.Tensor,
    Cc: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y`` plus what the state entering each chunk adds to its outputs, and the final state.

    y (b,h,nc,q,p), xs (b,nc,q,h,p), delta and a_cs (b,nc,q,h), Bc/Cc (b,g,nc,q,n). The
    chunk-local factors are made here for all chunks at once (one fused kernel each under
    torch.compile); the states then travel through :func:`_pass_states`.
    """
    b, nc, q, h, p = xs.shape
    g, n = Bc.shape[1], Bc.shape[-1]
    hg = h // g
    mm_dtype = _matmul_dtype(xs.device.type, xs.dtype)
    to_end = torch.exp(a_cs[:, :, -1:] - a_cs)  # exp(S_end − S_s)
    xw = (xs * (delta * to_end).unsqueeze(-1)).view(b, nc, q, g, hg * p)
    chunk_decay = torch.exp(a_cs[:, :, -1]).view(b, nc, g, hg, 1, 1)
    from_start = torch.exp(a_cs).permute(0, 3, 1, 2).reshape(b, g, hg, nc, q, 1)  # exp(S_t)
    y = y.view(b, g, hg, nc, q, p)  # updated in place (autograd too: its product saved no output)
    state = None if initial_state is None else initial_state.to(xs.dtype).reshape(b, g, hg * p, n)
    if torch.compiler.is_compiling() and not torch.is_grad_enabled():
        # One opaque op instead of the loop unrolled into the graph: unrolled, every chunk's
        # slices become kernels of their own (20 of the paper model's 46 C++ files on the CPU,
        # ~40 s of a cold compile, docs/benchmarks.md), the same code at other offsets.
        state = torch.ops.bsmamba2.ssd_pass_states(y, xw, chunk_decay, from_start, Bc, Cc, state, mm_dtype)
    else:
        state = _pass_states(y, xw, chunk_decay, from_start, Bc, Cc, state, mm_dtype)
    return y.view(b, h, nc, q, p), state.view(b, h, p, n)


def _pass_states(
    y: torch.Tensor,
    xw: torch.Tensor,
    chunk_decay: torch.Tensor,
    from_start: torch.Tensor,
    Bc: torch.Tensor,
    Cc: torch.Tensor,
    state: torch.Tensor | None,
    mm_dtype: torch.dtype,
) -> torch.Tensor:
    """The chunks in order: each adds C_t·H (H the state entering it) times exp(S_t) to its
    outputs in ``y`` (b,g,hg,nc,q,p), in place, then passes H·exp(S_end) + its own state,
    the sum of Δ_s x_s exp(S_end − S_s) ⊗ B_s over its steps (``xw`` (b,nc,q,g,hg·p) holds the
    first factor), on. Returns the state leaving the last chunk, (b, g, hg·p, n), in the
    decays' dtype.

    The state is kept as (b, g, heads_per_group·p, n) so that both products per chunk are
    plain batched matmuls, with operands in ``mm_dtype`` (what autocast would cast them to;
    explicit, so that the op gives the same under torch.compile's opaque call); never more
    than one state per sequence is held.
    """
    b, g, hg, nc, q, p = y.shape
    n = Bc.shape[-1]
    for c in range(nc):
        new = xw[:, c].permute(0, 2, 3, 1).to(mm_dtype) @ Bc[:, :, c].to(mm_dtype)
        if state is not None:
            off = (Cc[:, :, c].to(mm_dtype) @ state.transpose(-1, -2).to(mm_dtype)).view(b, g, q, hg, p)
            y[:, :, :, c].addcmul_(off.transpose(2, 3), from_start[:, :, :, c])
            new = (state.view(b, g, hg, p, n) * chunk_decay[:, c]).view(b, g, hg * p, n) + new  # promotes
        state = new
    return state.to(chunk_decay.dtype)  # a copy only when one chunk's product is all there is


@torch.library.custom_op("bsmamba2::ssd_pass_states", mutates_args=("y",))
def _pass_states_op(
    y: torch.Tensor,
    xw: torch.Tensor,
    chunk_decay: torch.Tensor,
    from_start: torch.Tensor,
    Bc: torch.Tensor,
    Cc: torch.Tensor,
    state: torch.Tensor | None,
    mm_dtype: torch.dtype,
) -> torch.Tensor:
    """:func:`_pass_states` as one op for torch.compile (inference only: no autograd formula)."""
    return _pass_states(y, xw, chunk_decay, from_start, Bc, Cc, state, mm_dtype)


@_pass_states_op.register_fake
def _(y, xw, chunk_decay, from_start, Bc, Cc, state, mm_dtype):
    b, g, hg, _, _, p = y.shape
    return y.new_empty((b, g, hg * p, Bc.shape[-1]), dtype=chunk_decay.dtype)


def ssd_scan_sequential(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 step-by-step recurrence: the ground truth every scan is tested against.

    Returns (y, final_state) in float64. Slow by design (a Python loop over time).
    """
    f64 = torch.float64
    b, length, h, p = x.shape
    g, n = B.shape[-2:]
    heads_group = torch.arange(h, device=x.device) // (h // g)
    delta = prepare_dt(dt, dt_bias, dt_softplus, f64)
    xs = x.to(f64)
    Bh = B.to(f64)[:, :, heads_group]  # (b,l,h,n)
    Ch = C.to(f64)[:, :, heads_group]
    state = (
        initial_state.to(f64).clone()
        if initial_state is not None
        else x.new_zeros(b, h, p, n, dtype=f64)
    )
    A64 = A.to(f64)
    ys = []
    for t in range(length):
        dA = torch.exp(delta[:, t] * A64)  # (b,h)
        inp = (delta[:, t, :, None] * xs[:, t]).unsqueeze(-1) * Bh[:, t].unsqueeze(-2)
        state = dA[..., None, None] * state + inp
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + xs * D.to(f64).view(h, 1)
    return y, state
