"""Pure-PyTorch Mamba-3 scan: the float64 step oracle and the chunked reference (CPU path).

Mamba-3 (Lahoti et al., 2026) per head, with k̃_t, q̃_t the normed B, C plus their per-head
bias, rotated by R(φ_t), φ_t = φ_{t−1} + Δ_t·π·tanh(θ_t):

    α_t = exp(A_t Δ_t),  λ_t = sigmoid(trap_t),  β_t = (1 − λ_t) Δ_t α_t,  γ_t = λ_t Δ_t
    H_t = α_t H_{t−1} + β_t Σ_r v_{t−1,r} k̃_{t−1,r}ᵀ + γ_t Σ_r v_{t,r} k̃_{t,r}ᵀ
    y_{t,r} = H_t q̃_{t,r} + D v_{t,r}

(the exponential-trapezoidal rule). SISO has rank 1 and v = x; MIMO rank R has
v_{t,r} = x_t ⊙ mimo_x_r and the outputs are contracted as Σ_r mimo_o_r ⊙ y_r ⊙ SiLU(z ⊙ mimo_z_r).
SISO rotates the pairs (2j, 2j+1), MIMO the pairs (j, j + N/2), j < S (the official kernels'
layouts: a checkpoint is tied to its path). Unrolled, the weight of v_s k̃_sᵀ in H_t (s < t) is
exp(Σ_{s<u≤t} A_u Δ_u)·ω_s with ω_s = λ_s Δ_s + (1 − λ_{s+1}) Δ_{s+1}, and γ_t at s = t: an SSD
scan with Δ → ω, a per-token decay, per-head rotated q·k and the diagonal replaced by γ_t q·k.
That is the chunked form of :func:`mamba3_scan`.

Argument layout (the official kernel call's): q, k (b, l, g, n), or (b, l, r, g, n) for MIMO;
v, z (b, l, h, p); adt = A·Δ, dt = Δ and trap (pre-sigmoid) (b, h, l); q_bias, k_bias (h, n) or
(h, r, n); angles θ (pre-tanh) (b, l, h, s); D (h,); mimo_x, mimo_z, mimo_o (h, r, p).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 64


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def rotary_pairs(n: int, s: int, mimo: bool, device: torch.device | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i0, i1) of the S rotated pairs of an N-vector: (2j, 2j+1) SISO, (j, j+N/2) MIMO."""
    j = torch.arange(s, device=device)
    return (j, j + n // 2) if mimo else (2 * j, 2 * j + 1)


def rotate(x: torch.Tensor, phi: torch.Tensor, mimo: bool) -> torch.Tensor:
    """x (..., n) with its pairs rotated by the angles phi (..., s) (broadcast): R(φ)·(x_i0, x_i1)."""
    i0, i1 = rotary_pairs(x.shape[-1], phi.shape[-1], mimo, x.device)
    x0, x1 = x[..., i0], x[..., i1]
    cos, sin = torch.cos(phi), torch.sin(phi)
    out = x.index_copy(-1, i0, (x0 * cos - x1 * sin).expand_as(x0))
    return out.index_copy(-1, i1, (x0 * sin + x1 * cos).expand_as(x1))


def halves_first(x: torch.Tensor) -> torch.Tensor:
    """The last axis's even columns, then its odd ones: SISO rotation pairs (2j, 2j+1) become
    (j, j+N/2), the layout the Triton kernels take."""
    return x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)


def adjacent_pairs(x: torch.Tensor) -> torch.Tensor:
    """The last axis's pairs (j, j + N/2) as (2j, 2j+1): the inverse of :func:`halves_first`."""
    return x.unflatten(-1, (2, -1)).transpose(-1, -2).flatten(-2)


def angle_cumsum(angles: torch.Tensor, dt: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """φ_t = Σ_{u≤t} Δ_u·π·tanh(θ_u): angles (b, l, h, s), dt (b, h, l) → (b, l, h, s)."""
    return (math.pi * torch.tanh(angles.to(dtype)) * dt.to(dtype).transpose(1, 2).unsqueeze(-1)).cumsum(1)


def _ranked(q, k, q_bias, k_bias, mimo: bool):
    """q, k as (b, l, r, g, n) and the biases as (r, h, n)."""
    if not mimo:
        q, k, q_bias, k_bias = q.unsqueeze(2), k.unsqueeze(2), q_bias.unsqueeze(1), k_bias.unsqueeze(1)
    return q, k, q_bias.transpose(0, 1), k_bias.transpose(0, 1)


def _inputs(q, k, v, adt, dt, trap, q_bias, k_bias, angles, mimo_x, dtype):
    """Rotated per-head q̃, k̃ (b, l, r, h, n), v (b, l, r, h, p), and A·Δ, γ, ω (b, l, h)."""
    mimo = mimo_x is not None
    h = v.shape[2]
    q, k, q_bias, k_bias = _ranked(q, k, q_bias, k_bias, mimo)
    g = q.shape[3]
    if h % g:
        raise ValueError(f"nheads ({h}) must be a multiple of ngroups ({g})")
    heads_group = torch.arange(h, device=v.device) // (h // g)
    phi = angle_cumsum(angles, dt, dtype).unsqueeze(2)  # (b, l, 1, h, s)
    qr = rotate(q.to(dtype)[:, :, :, heads_group] + q_bias.to(dtype), phi, mimo)
    kr = rotate(k.to(dtype)[:, :, :, heads_group] + k_bias.to(dtype), phi, mimo)
    vs = v.to(dtype).unsqueeze(2)
    if mimo:
        vs = vs * mimo_x.to(dtype).transpose(0, 1)
    delta = dt.to(dtype).transpose(1, 2)
    lam = torch.sigmoid(trap.to(dtype)).transpose(1, 2)
    gamma = lam * delta
    omega = gamma + F.pad(((1 - lam) * delta)[:, 1:], (0, 0, 0, 1))
    return qr, kr, vs, adt.to(dtype).transpose(1, 2), gamma, omega


def _outputs(y, vs, D, z, mimo_z, mimo_o, mimo: bool, dtype):
    """y (b, l, r, h, p) plus D·v, gated and rank-contracted: (b, l, h, p), or per rank
    (b, l, r, h, p) for MIMO without mimo_o."""
    if D is not None:
        y = y + vs * D.to(dtype).unsqueeze(-1)
    if not mimo:
        y = y.squeeze(2)
        return y if z is None else y * F.silu(z.to(dtype))
    if z is not None:
        zr = z.to(dtype).unsqueeze(2)
        if mimo_z is not None:
            zr = zr * mimo_z.to(dtype).transpose(0, 1)
        y = y * F.silu(zr)
    if mimo_o is None:
        return y
    return (y * mimo_o.to(dtype).transpose(0, 1)).sum(2)


def _check(q, v, mimo_x, mimo_o, mimo_z) -> bool:
    mimo = mimo_x is not None
    if q.dim() != (5 if mimo else 4):
        raise ValueError(f"q has {q.dim()} dims: expected (b, l, g, n) for SISO, (b, l, r, g, n) "
                         "with mimo_x for MIMO")
    if not mimo and (mimo_o is not None or mimo_z is not None):
        raise ValueError("mimo_z / mimo_o need mimo_x (MIMO)")
    if v.dim() != 4:
        raise ValueError(f"v must be (b, l, h, p), got {tuple(v.shape)}")
    return mimo


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
    """The Mamba-3 scan in chunked matrix form (layouts in the module docstring).

    ``reverse``: the scan of the sequences read from their last step to their first, returned
    in their own order (here by flipped copies). ``halved_pairs`` (SISO): q, k and their biases
    hold the rotation pairs (2j, 2j+1) as (j, j + N/2), as the Triton kernels take them (a
    caller that makes them so saves the kernels' copy); here they are put back.

    Within a chunk of T steps every row (t, r) sees the columns (s, r') through
    (q̃_{t,r}·k̃_{s,r'}) times exp(S_t − S_s)·ω_s for s < t and γ_t for s = t (S = cumulative
    A·Δ): one batched product per chunk; chunks exchange (p, n) states in a loop over chunks.
    Arithmetic runs in float32 (float64 for float64 inputs); the result has v's dtype.
    ``chunk_size`` (steps; default 64 / R, i.e. 64 rows) changes speed and memory, not results.
    """
    mimo = _check(q, v, mimo_x, mimo_o, mimo_z)
    if halved_pairs and not mimo:
        q, k, q_bias, k_bias = (adjacent_pairs(x) for x in (q, k, q_bias, k_bias))
    if reverse:
        q, k, v, angles, z = (None if x is None else x.flip(1) for x in (q, k, v, angles, z))
        adt, dt, trap = (x.flip(2) for x in (adt, dt, trap))
        return mamba3_scan(q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z, mimo_x=mimo_x, mimo_z=mimo_z,
                           mimo_o=mimo_o, chunk_size=chunk_size).flip(1)
    cdt = compute_dtype(v)
    qr, kr, vs, adt_, gamma, omega = _inputs(q, k, v, adt, dt, trap, q_bias, k_bias, angles, mimo_x, cdt)
    b, length, r, h, n = qr.shape
    p = vs.shape[-1]
    t = min(length, chunk_size or DEFAULT_CHUNK // r)
    nc = -(-length // t)
    pad = nc * t - length  # zeros: no decay, no input, no output

    def chunked(x: torch.Tensor) -> torch.Tensor:  # (b, l, ...) → (b, h, nc, t, ...)
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
        x = x.view(b, nc, t, *x.shape[2:])
        return x.movedim(-2, 1) if x.dim() == 6 else x.movedim(-1, 1)

    Q, K, V = (chunked(x) for x in (qr, kr, vs))  # (b, h, nc, t, r, ·)
    S, W, G = (chunked(x) for x in (adt_, omega, gamma))  # (b, h, nc, t)
    S = S.cumsum(-1)
    eye = torch.eye(t, dtype=torch.bool, device=v.device)
    strict = torch.ones(t, t, dtype=torch.bool, device=v.device).tril(-1)
    seg = (S.unsqueeze(-1) - S.unsqueeze(-2)).masked_fill(~strict, float("-inf"))
    weight = torch.where(eye, G.unsqueeze(-1), seg.exp() * W.unsqueeze(-2))  # (b, h, nc, t, s)
    Qf, Kf, Vf = (x.reshape(b, h, nc, t * r, -1) for x in (Q, K, V))
    scores = (Qf @ Kf.transpose(-1, -2)).view(b, h, nc, t, r, t, r)
    scores = scores * weight.view(b, h, nc, t, 1, t, 1)
    y = scores.view(b, h, nc, t * r, t * r) @ Vf  # (b, h, nc, t·r, p)
    if nc > 1:
        to_end = torch.exp(S[..., -1:] - S) * W  # exp(S_end − S_s)·ω_s
        states = (Vf * to_end.repeat_interleave(r, -1).unsqueeze(-1)).transpose(-1, -2) @ Kf  # (b,h,nc,p,n)
        decay = torch.exp(S[..., -1])  # (b, h, nc)
        state = torch.zeros(b, h, p, n, dtype=cdt, device=v.device)
        entering = []
        for c in range(nc):
            entering.append(state)
            state = state * decay[:, :, c, None, None] + states[:, :, c]
        entering = torch.stack(entering, 2)  # (b, h, nc, p, n)
        y = y + (Qf @ entering.transpose(-1, -2)) * torch.exp(S).repeat_interleave(r, -1).unsqueeze(-1)
    y = y.view(b, h, nc * t, r, p)[:, :, :length].permute(0, 2, 3, 1, 4)  # (b, l, r, h, p)
    return _outputs(y, vs, D, z, mimo_z, mimo_o, mimo, cdt).to(v.dtype)


def mamba3_scan_sequential(
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
) -> torch.Tensor:
    """The float64 step-by-step recurrence of the module docstring: the oracle of every
    Mamba-3 scan. Slow by design (a Python loop over time); returns float64."""
    mimo = _check(q, v, mimo_x, mimo_o, mimo_z)
    f64 = torch.float64
    qr, kr, vs, adt_, gamma, _ = _inputs(q, k, v, adt, dt, trap, q_bias, k_bias, angles, mimo_x, f64)
    lam = torch.sigmoid(trap.to(f64)).transpose(1, 2)
    delta = dt.to(f64).transpose(1, 2)
    alpha = torch.exp(adt_)
    beta = (1 - lam) * delta * alpha
    b, length, _, h, n = qr.shape
    state = torch.zeros(b, h, vs.shape[-1], n, dtype=f64, device=v.device)
    prev = torch.zeros_like(state)
    ys = []
    for step in range(length):
        cur = torch.einsum("brhp,brhn->bhpn", vs[:, step], kr[:, step])
        state = (alpha[:, step, :, None, None] * state + beta[:, step, :, None, None] * prev
                 + gamma[:, step, :, None, None] * cur)
        prev = cur
        ys.append(torch.einsum("bhpn,brhn->brhp", state, qr[:, step]))
    return _outputs(torch.stack(ys, 1), vs, D, z, mimo_z, mimo_o, mimo, f64)
