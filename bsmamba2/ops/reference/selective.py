"""Pure-PyTorch Mamba-1 selective scan: the CPU path, and the float64 oracle of every scan.

The layout is mamba_ssm's ``selective_scan_fn``: u, delta, z (batch, d, length); A (d, n);
B, C (batch, n, length) or (batch, groups, n, length); D, delta_bias (d,). Per channel d
and state n: ``h_t = exp(Δ_t A_dn) h_{t−1} + Δ_t B_tn u_t``, ``y_t = Σ_n C_tn h_t + D u_t``,
``out = y ⊙ silu(z)``, with Δ = softplus(delta + delta_bias) when ``delta_softplus``.

:func:`selective_scan` walks the sequence in chunks. Inside a chunk of q steps the
recurrence is solved in log space, ``h_t = e^{S_t} (h_start + Σ_{s≤t} e^{−S_s} Δ_s B_s u_s)``
with ``S`` the cumulative ``Δ A`` of the chunk: two cumulative sums over a
(batch, d, q, n) tile instead of q dependent steps. ``e^{−S}`` grows with the decay over the
chunk, so a chunk whose decay exceeds the float range is halved until it fits (down to a
single step, which is exact). q is chosen so that a chunk tile stays cache-sized: on the
paper model's shapes a single step is already a 4 MB slab of (batch, d, n), and the chunks
are single steps, each a handful of passes over the slab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bsmamba2.ops.reference.common import compute_dtype, eager_inference

CHUNK_ELEMENTS = 1 << 18
"""Elements of a chunk's (batch, d, q, n) tile: q = this / (batch·d·n), at most MAX_CHUNK."""
MAX_CHUNK = 64
LOG_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}
"""Largest decay (in e-folds) over one log-space chunk: e^{±limit} stays finite."""


def _grouped(t: torch.Tensor) -> torch.Tensor:
    """B or C as (batch, groups, n, length)."""
    if t.dim() not in (3, 4):
        raise ValueError(f"selective_scan: B and C must be (batch, n, length) or (batch, groups, n, length), "
                         f"got shape {tuple(t.shape)}")
    return t.unsqueeze(1) if t.dim() == 3 else t


def _delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool, dtype: torch.dtype):
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    return F.softplus(delta) if softplus else delta


def _finish(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """y + D u, gated by silu(z)."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *,
                              initial_state=None):
    """The float64 step-by-step recurrence, the oracle: (out, final state (batch, d, n)) in float64."""
    f64 = torch.float64
    b, d, length = u.shape
    Bg, Cg = _grouped(B).to(f64), _grouped(C).to(f64)
    group_of = torch.arange(d, device=u.device) // (d // Bg.shape[1])
    Bd, Cd = Bg[:, group_of], Cg[:, group_of]  # (b, d, n, L)
    dl = _delta(delta, delta_bias, delta_softplus, f64)
    us, A64 = u.to(f64), A.to(f64)
    h = initial_state.to(f64) if initial_state is not None else u.new_zeros(b, d, A.shape[1], dtype=f64)
    ys = []
    for t in range(length):
        h = torch.exp(dl[:, :, t, None] * A64) * h + (dl[:, :, t] * us[:, :, t])[..., None] * Bd[..., t]
        ys.append((h * Cd[..., t]).sum(-1))
    return _finish(torch.stack(ys, -1), us, D, z), h


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, initial_state=None, return_final_state=False,
                   chunk: int | None = None):
    """The selective scan (module docstring); ``selective_scan_fn``'s arguments and result.

    Returns out (u's dtype) and, with ``return_last_state`` / ``return_final_state``, the
    final state (batch, d, n) in float32 (float64 for float64 input). ``chunk`` overrides
    the chunk length (tests).
    """
    cdt = compute_dtype(u)
    b, d, length = u.shape
    n = A.shape[1]
    Bg, Cg = _grouped(B), _grouped(C)
    g = Bg.shape[1]
    if d % g:
        raise ValueError(f"selective_scan: d ({d}) must be a multiple of the groups of B/C ({g})")
    dg = d // g
    dl = _delta(delta, delta_bias, delta_softplus, cdt).view(b, g, dg, length)
    us = u.to(cdt)
    du = dl * us.view(b, g, dg, length)
    # (b, g, L, n): a step's B and C are contiguous.
    Bt, Ct = (t.to(cdt).transpose(-1, -2) for t in (Bg, Cg))
    Ag = A.to(cdt).view(g, dg, n)
    h = (initial_state.to(cdt, copy=True).view(b, g, dg, n) if initial_state is not None
         else u.new_zeros(b, g, dg, n, dtype=cdt))
    inplace = eager_inference(u, delta, A, B, C, D, z, delta_bias, initial_state)
    q = chunk or max(1, min(MAX_CHUNK, CHUNK_ELEMENTS // max(1, b * d * n)))
    limit = LOG_LIMIT[cdt]
    ys: list[torch.Tensor] = []
    if inplace and q == 1:  # reused buffers: no 4 MB allocation per step
        decay = u.new_empty(b, g, dg, n, dtype=cdt)
        y_steps = u.new_empty(length, b, g, dg, 1, dtype=cdt)
        ys = list(y_steps.squeeze(-1).unbind(0))

    def step(h: torch.Tensor, t: int) -> torch.Tensor:
        if inplace and q == 1:
            h.mul_(torch.mul(dl[:, :, :, t, None], Ag, out=decay).exp_())
            h.addcmul_(du[:, :, :, t, None], Bt[:, :, None, t])
            torch.matmul(h, Ct[:, :, t, :, None], out=y_steps[t])
            return h
        h = torch.exp(dl[:, :, :, t, None] * Ag) * h + du[:, :, :, t, None] * Bt[:, :, None, t]
        ys.append((h @ Ct[:, :, t, :, None]).squeeze(-1))  # (b, g, dg)
        return h

    def run(h: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        if t1 - t0 == 1:
            return step(h, t0)
        S = (dl[:, :, :, t0:t1, None] * Ag[:, :, None]).cumsum(3)  # (b, g, dg, q, n)
        if -S[:, :, :, -1].min() > limit:  # e^{−S} would overflow: halve the chunk
            mid = (t0 + t1) // 2
            return run(run(h, t0, mid), mid, t1)
        w = torch.exp(-S) * (du[:, :, :, t0:t1, None] * Bt[:, :, None, t0:t1])
        hs = torch.exp(S) * (h[:, :, :, None] + w.cumsum(3))
        ys.append((hs * Ct[:, :, None, t0:t1]).sum(-1))  # (b, g, dg, q)
        return hs[:, :, :, -1]

    for t0 in range(0, length, q):
        h = run(h, t0, min(t0 + q, length))
    y = torch.stack(ys, 1) if q == 1 else torch.cat([p if p.dim() == 4 else p[..., None] for p in ys], -1)
    y = y.reshape(b, length, d).transpose(1, 2) if q == 1 else y.reshape(b, d, length)
    out = _finish(y, us, D, z).to(u.dtype)
    final = h.reshape(b, d, n)
    return (out, final) if (return_last_state or return_final_state) else out
