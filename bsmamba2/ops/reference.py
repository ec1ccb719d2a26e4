"""Pure-PyTorch reference implementations of the Mamba-2 operations.

These are the CPU path of the model and the oracle for the GPU kernels. The SSD scan
is written in Mamba-2's chunked matrix form: within a chunk the recurrence is an
"attention" product masked by the decay matrix, and chunks exchange their states
through one small matrix product, so there is no Python loop over time steps.
Arithmetic runs in float32 (float64 for float64 inputs); results are cast back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 64


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def prepare_dt(
    dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool, dtype: torch.dtype
) -> torch.Tensor:
    """Δ = softplus(dt + dt_bias) (each part optional), in the compute dtype."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    return F.softplus(dt) if dt_softplus else dt


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

    Within a chunk of q steps: y_t = Σ_{s<=t} (C_t·B_s) exp(S_t − S_s) Δ_s x_s (S = cumulative
    Δ·A), one batched matrix product for all chunks and heads. Across chunks only the
    (h, p, n) states travel, in a loop over chunks (not time steps) that never holds more
    than one state per sequence; a sequence that fits in one chunk skips it entirely.
    """
    b, length, h, p = x.shape
    g, n = B.shape[-2:]
    if h % g:
        raise ValueError(f"nheads ({h}) must be a multiple of ngroups ({g})")
    hg = h // g
    cdt = compute_dtype(x)
    delta = prepare_dt(dt, dt_bias, dt_softplus, cdt)  # (b,l,h)
    xs, Bs, Cs = x.to(cdt), B.to(cdt), C.to(cdt)

    q = min(length, chunk_size)
    nc = -(-length // q)
    pad = nc * q - length
    if pad:  # Δ = 0 in the padding: no decay and no input, the state passes through.
        xs, Bs, Cs = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xs, Bs, Cs))
        delta = F.pad(delta, (0, 0, 0, pad))
    delta = delta.view(b, nc, q, h)
    a_cs = (delta * A.to(cdt)).cumsum(2)  # S_t within each chunk, (b,nc,q,h)
    xs = xs.view(b, nc, q, h, p)
    Bc = Bs.view(b, nc, q, g, n).permute(0, 3, 1, 2, 4)  # (b,g,nc,q,n)
    Cc = Cs.view(b, nc, q, g, n).permute(0, 3, 1, 2, 4)

    # Intra-chunk part, per head: (C_t·B_s) exp(S_t − S_s) for s <= t, times Δ_s x_s.
    cb = Cc @ Bc.transpose(-1, -2)  # (b,g,nc,q,q), shared by the heads of a group
    cs = a_cs.permute(0, 3, 1, 2)  # (b,h,nc,q)
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp((cs.unsqueeze(-1) - cs.unsqueeze(-2)).masked_fill(~causal, float("-inf")))
    scores = decay.view(b, g, hg, nc, q, q) * cb.unsqueeze(2)
    xdt = (xs * delta.unsqueeze(-1)).permute(0, 3, 1, 2, 4)  # (b,h,nc,q,p)
    y = (scores.view(b, h, nc, q, q) @ xdt).permute(0, 2, 3, 1, 4)  # (b,nc,q,h,p)

    final = None
    if nc > 1 or initial_state is not None or return_final_state:
        y_off, final = _inter_chunk(xs, delta, a_cs, Bc, Cc, initial_state)
        y = y + y_off
    y = y.reshape(b, nc * q, h, p)[:, :length]
    if D is not None:
        y = y + xs.view(b, nc * q, h, p)[:, :length] * D.to(cdt).view(h, 1)
    y = y.to(x.dtype)
    return (y, final) if return_final_state else y


def _inter_chunk(
    xs: torch.Tensor,
    delta: torch.Tensor,
    a_cs: torch.Tensor,
    Bc: torch.Tensor,
    Cc: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the state entering each chunk adds to its outputs, and the final state.

    xs (b,nc,q,h,p), delta and a_cs (b,nc,q,h), Bc/Cc (b,g,nc,q,n). The state is kept as
    (b, g, heads_per_group·p, n) so that both products per chunk are plain batched matmuls.
    """
    b, nc, q, h, p = xs.shape
    g, n = Bc.shape[1], Bc.shape[-1]
    hg = h // g
    to_end = torch.exp(a_cs[:, :, -1:] - a_cs)  # exp(S_end − S_s)
    xw = (xs * (delta * to_end).unsqueeze(-1)).view(b, nc, q, g, hg * p)
    chunk_decay = torch.exp(a_cs[:, :, -1]).view(b, nc, g, hg, 1, 1)
    state = None if initial_state is None else initial_state.to(xs.dtype).reshape(b, g, hg * p, n)
    outs = []
    for c in range(nc):
        if state is None:
            outs.append(xs.new_zeros(b, g, q, hg * p))
            state = xw[:, c].permute(0, 2, 3, 1) @ Bc[:, :, c]
            continue
        outs.append(Cc[:, :, c] @ state.transpose(-1, -2))
        decayed = (state.view(b, g, hg, p, n) * chunk_decay[:, c]).view(b, g, hg * p, n)
        state = decayed + xw[:, c].permute(0, 2, 3, 1) @ Bc[:, :, c]
    y_off = torch.stack(outs, dim=1).permute(0, 1, 3, 2, 4).reshape(b, nc, q, h, p)
    return y_off * torch.exp(a_cs).unsqueeze(-1), state.view(b, h, p, n)


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


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Causal depthwise conv1d on channel-last input: x (b,l,d), weight (d,w), bias (d).

    y_t = Σ_k weight[:, k] · x_{t-w+1+k} + bias (zeros before the start), then SiLU
    when activation == "silu". A sum of shifted products: no transposes, exact.
    """
    if activation not in (None, "silu"):
        raise ValueError(f"unsupported activation {activation!r}")
    cdt = compute_dtype(x)
    width = weight.shape[-1]
    xs, w = x.to(cdt), weight.to(cdt)
    y = xs * w[:, -1]
    for k in range(width - 1):
        shift = width - 1 - k  # tap k sees x_{t-shift}; earlier samples are zero
        if shift < xs.shape[1]:
            y[:, shift:].addcmul_(xs[:, :-shift], w[:, k])
    if bias is not None:
        y = y + bias.to(cdt)
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype)


def gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    group_size: int | None = None,
) -> torch.Tensor:
    """RMSNorm(x · SiLU(z)) · weight over groups of the last axis (gate before norm).

    group_size None means one group spanning the whole last axis (Mamba-2 with ngroups 1).
    """
    cdt = compute_dtype(x)
    y = x.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    d = y.shape[-1]
    gs = d if group_size is None else group_size
    if d % gs:
        raise ValueError(f"last dimension {d} is not a multiple of group_size {gs}")
    yg = y.view(*y.shape[:-1], d // gs, gs)
    yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + eps)
    return (yg.view_as(y) * weight.to(cdt)).to(x.dtype)
