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


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Stable segment sums: out[..., i, j] = sum(a[..., j+1 : i+1]) for j <= i, -inf above.

    Built by a masked cumulative sum rather than a difference of prefix sums, so long
    decays keep their precision in float32.
    """
    n = a.shape[-1]
    rep = a.unsqueeze(-1).expand(*a.shape, n)  # rep[..., i, j] = a[..., i]
    strict = torch.ones(n, n, dtype=torch.bool, device=a.device).tril(-1)
    out = rep.masked_fill(~strict, 0).cumsum(dim=-2)
    return out.masked_fill(~strict.logical_or(torch.eye(n, dtype=torch.bool, device=a.device)), float("-inf"))


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
    """
    b, length, h, p = x.shape
    g, n = B.shape[-2:]
    if h % g:
        raise ValueError(f"nheads ({h}) must be a multiple of ngroups ({g})")
    hg = h // g
    cdt = compute_dtype(x)
    out_dtype = x.dtype
    delta = prepare_dt(dt, dt_bias, dt_softplus, cdt)  # (b,l,h)
    xs, Bs, Cs = x.to(cdt), B.to(cdt), C.to(cdt)

    q = length if length <= chunk_size else chunk_size
    nc = -(-length // q)
    pad = nc * q - length
    if pad:  # Δ = 0 in the padding: no decay and no input, the state passes through.
        xs, Bs, Cs = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xs, Bs, Cs))
        delta = F.pad(delta, (0, 0, 0, pad))

    a = (delta * A.to(cdt)).view(b, nc, q, h).permute(0, 3, 1, 2)  # (b,h,nc,q)
    a_cs = a.cumsum(-1)
    xdt = (xs * delta.unsqueeze(-1)).view(b, nc, q, g, hg, p)  # Δ_s x_s
    Bc = Bs.view(b, nc, q, g, n)
    Cc = Cs.view(b, nc, q, g, n)

    # Intra-chunk ("diagonal") part: y_t = Σ_{s<=t} (C_t·B_s) exp(S_t - S_s) Δ_s x_s.
    cb = torch.einsum("bcqgn,bcsgn->bcgqs", Cc, Bc)  # shared by the heads of a group
    decay = torch.exp(segsum(a)).view(b, g, hg, nc, q, q).permute(0, 3, 1, 2, 4, 5)
    scores = cb.unsqueeze(3) * decay  # (b,nc,g,hg,q,s)
    y = torch.einsum("bcgjqs,bcsgjp->bcqgjp", scores, xdt)

    # State each chunk adds at its end: Σ_s exp(S_end - S_s) Δ_s x_s ⊗ B_s.
    to_end = torch.exp(a_cs[..., -1:] - a_cs).view(b, g, hg, nc, q).permute(0, 3, 4, 1, 2)
    states = torch.einsum("bcsgjp,bcsgn->bcgjpn", xdt * to_end.unsqueeze(-1), Bc)
    states = states.reshape(b, nc, h, p, n)

    # Inter-chunk recurrence in matrix form: H_c = Σ_{k<=c} exp(Σ_{k<j<=c} a_j) states_k.
    if initial_state is None:
        init = states.new_zeros(b, 1, h, p, n)
    else:
        init = initial_state.to(cdt).unsqueeze(1)
    states = torch.cat([init, states], dim=1)  # (b,nc+1,h,p,n)
    chunk_decay = F.pad(a_cs[..., -1], (1, 0))  # (b,h,nc+1)
    across = torch.exp(segsum(chunk_decay))  # (b,h,nc+1,nc+1)
    carried = torch.einsum("bhck,bkhpn->bchpn", across, states)
    prev, final = carried[:, :-1], carried[:, -1]

    # Contribution of the state entering each chunk: exp(S_t) C_t·H_prev.
    prev = prev.view(b, nc, g, hg, p, n)
    from_start = torch.exp(a_cs).view(b, g, hg, nc, q).permute(0, 3, 4, 1, 2)
    y = y + torch.einsum("bcqgn,bcgjpn->bcqgjp", Cc, prev) * from_start.unsqueeze(-1)

    y = y.reshape(b, nc * q, h, p)[:, :length]
    if D is not None:
        y = y + xs[:, :length] * D.to(cdt).view(h, 1)
    y = y.to(out_dtype)
    return (y, final) if return_final_state else y


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
    length = x.shape[1]
    width = weight.shape[-1]
    xs = F.pad(x.to(cdt), (0, 0, width - 1, 0))
    w = weight.to(cdt)
    y = xs[:, width - 1 :] * w[:, -1]
    for k in range(width - 1):
        y = y + xs[:, k : k + length] * w[:, k]
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
