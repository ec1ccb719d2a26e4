"""Pure-PyTorch Mamba-1 selective scan: the CPU path, and the float64 oracle of every scan.

The layout is mamba_ssm's ``selective_scan_fn``: u, delta, z (batch, d, length); A (d, n);
B, C (batch, n, length) or (batch, groups, n, length); D, delta_bias (d,). Per channel d
and state n: ``h_t = exp(Δ_t A_dn) h_{t−1} + Δ_t B_tn u_t``, ``y_t = Σ_n C_tn h_t + D u_t``,
``out = y ⊙ silu(z)``, with Δ = softplus(delta + delta_bias) when ``delta_softplus``.

:func:`selective_scan` works in tiles of a few sequences × a few steps, with the state
laid out (n, channels) so that every pass runs along the contiguous channels. Per tile, the
work that does not depend on the previous step is done in large passes over the whole tile
(Δ, the decays, the inputs Δ B u, the contraction with C as one batched product, D and the
gate); per step only ``h = decay ⊙ h + input`` is left, one fused multiply-add. The decay is
computed as ``2^{Δ A log2 e}``: ``exp2`` is several times cheaper than ``exp`` on the CPU. The
recurrence stays the exact step recurrence (no log-space rescaling, so no overflow however
strong the decay). A tile is sized to stay in the cache; in inference the sequences' tiles are
shared out between threads (:func:`_split_over_threads`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from bsmamba2.ops.reference.common import compute_dtype, eager_inference

LOG2E = 1 / math.log(2)
TILE_STEPS = 4
TILE_ELEMENTS = 1 << 20
"""A tile is TILE_STEPS steps of as many sequences as keep its states (steps × sequences × d
× n) within this (4 MB in float32): a step's multiply-add then spans enough elements that the
per-op cost and the split over threads stay small (measured in docs/benchmarks.md)."""
_SPLITTING = threading.Lock()
"""Held by the scan whose tiles are split over threads (it has set torch's thread count)."""


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
    b, d, _ = u.shape
    Bg, Cg = _grouped(B).to(f64), _grouped(C).to(f64)
    group_of = torch.arange(d, device=u.device) // (d // Bg.shape[1])
    Bd, Cd = Bg[:, group_of], Cg[:, group_of]  # (b, d, n, L)
    dl = _delta(delta, delta_bias, delta_softplus, f64)
    us, A64 = u.to(f64), A.to(f64)
    h = initial_state.to(f64) if initial_state is not None else u.new_zeros(b, d, A.shape[1], dtype=f64)
    ys = []
    # The steps as lists (one unbind each: its backward is one stack, where a per-step index
    # would add a zero-filled copy of the whole input per step).
    steps = zip(dl.unbind(2), (dl * us).unbind(2), Bd.unbind(3), Cd.unbind(3), strict=True)
    for dl_t, du_t, B_t, C_t in steps:
        h = torch.exp(dl_t[..., None] * A64) * h + du_t[..., None] * B_t
        ys.append((h * C_t).sum(-1))
    return _finish(torch.stack(ys, -1), us, D, z), h


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, initial_state=None, return_final_state=False,
                   block: tuple[int, int] | None = None):
    """The selective scan (module docstring); ``selective_scan_fn``'s arguments and result.

    Returns out (u's dtype) and, with ``return_last_state`` / ``return_final_state``, the
    final state (batch, d, n) in float32 (float64 for float64 input). ``block`` overrides the
    tile, (sequences, steps) (tests).
    """
    cdt = compute_dtype(u)
    b, d, length = u.shape
    n = A.shape[1]
    Bg, Cg = _grouped(B), _grouped(C)
    g = Bg.shape[1]
    if d % g:
        raise ValueError(f"selective_scan: d ({d}) must be a multiple of the groups of B/C ({g})")
    dg = d // g
    # Step-major views: (length, batch, groups, channels) and (length, batch, groups, n); a
    # step's channels are contiguous in the model's channel-last tensors.
    us, dls = (t.permute(2, 0, 1).unflatten(2, (g, dg)) for t in (u, delta))
    zs = z.permute(2, 0, 1).unflatten(2, (g, dg)) if z is not None else None
    Bs, Cs = (t.to(cdt).permute(3, 0, 1, 2) for t in (Bg, Cg))
    A2 = (A.to(cdt) * LOG2E).view(g, dg, n).transpose(1, 2).contiguous()  # e^{Δ A} = 2^{Δ A log2 e}
    bias = delta_bias.to(cdt).view(g, dg) if delta_bias is not None else None
    Dg = D.to(cdt).view(g, dg) if D is not None else None
    # The state, (batch, groups, n, channels), our own copy: the inference path updates it in place.
    h0 = (initial_state.to(cdt).view(b, g, dg, n).transpose(-1, -2)
          .clone(memory_format=torch.contiguous_format)
          if initial_state is not None else u.new_zeros(b, g, n, dg, dtype=cdt))
    inplace = eager_inference(u, delta, A, B, C, D, z, delta_bias, initial_state)
    rows, q = block or _block(b, d, n)
    out = u.new_empty(b, length, g, dg) if inplace else None
    # [step chunk][row block] views: one split per chunk, whose backward is one concatenation
    # (indexing a tile out of the whole input would add a zero-filled copy of it per tile).
    dlt, ut, Bt, Ct = ([chunk.split(rows, 1) for chunk in t.split(q)] for t in (dls, us, Bs, Cs))
    zt = [chunk.split(rows, 1) for chunk in zs.split(q)] if zs is not None else None
    h0s = h0.split(rows)

    def scan_rows(j: int, buffers: dict | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Row block j (sequences j·rows …) through every step: (its output, or None when
        written into ``out``; its final state)."""
        h, chunks, s0 = h0s[j], [], j * rows
        for i, t0 in enumerate(range(0, length, q)):
            y, h = _tile(h, dlt[i][j], ut[i][j], zt[i][j] if zt else None, Bt[i][j], Ct[i][j],
                         A2, bias, Dg, delta_softplus, buffers)
            if buffers:
                out[s0:s0 + rows, t0:t0 + q].copy_(y.transpose(0, 1))
            else:
                chunks.append(y)
        return (None if buffers else torch.cat(chunks).transpose(0, 1)), h

    blocks = list(range(len(h0s)))
    if inplace:  # the tiles write into out and h0
        def scan_part(part: list[int]) -> None:
            buffers = _tile_buffers(q, rows, g, n, dg, u, cdt)
            for j in part:
                scan_rows(j, buffers)

        _split_over_threads(scan_part, blocks)
        final = h0
    else:
        ys, finals = zip(*(scan_rows(j, None) for j in blocks), strict=True)
        out, final = torch.cat(ys).to(u.dtype), torch.cat(finals)
    out = out.view(b, length, d).transpose(1, 2)
    if not (return_last_state or return_final_state):
        return out
    return out, final.transpose(-1, -2).reshape(b, d, n)


def _split_over_threads(work: Callable[[list[int]], None], blocks: list[int]) -> None:
    """``work`` over the row ``blocks``, split between torch's intra-op threads as Python
    threads that each run their ops single-threaded (torch releases the GIL inside an op).

    A tile's ops are too small to split well: every op split over threads ends in a barrier,
    and on a busy machine a barrier waits for whichever thread was descheduled (measured in
    docs/benchmarks.md); these threads meet once, at the end. torch's thread count is
    process-wide: it is 1 while the scan runs (ops of other threads run single-threaded for
    that time) and restored after; a scan that starts meanwhile in another thread (a server's
    jobs) runs its tiles in its own thread. Grad and inference mode are per thread: passed on.
    """
    before = torch.get_num_threads()
    threads = min(before, len(blocks))
    if threads < 2 or not _SPLITTING.acquire(blocking=False):
        work(blocks)
        return
    inference = torch.is_inference_mode_enabled()

    def run(part: list[int]) -> None:
        torch.set_num_threads(1)  # for a thread-local BLAS setting too
        with torch.inference_mode(inference), torch.no_grad():
            work(part)

    try:
        torch.set_num_threads(1)
        with ThreadPoolExecutor(threads) as pool:
            for done in [pool.submit(run, blocks[i::threads]) for i in range(threads)]:
                done.result()
    finally:
        torch.set_num_threads(before)
        _SPLITTING.release()


def _block(b: int, d: int, n: int) -> tuple[int, int]:
    """(sequences, steps) of a tile: TILE_STEPS steps of as many sequences as TILE_ELEMENTS
    allow, and no more than leave every intra-op thread a share of the sequences."""
    share = -(-b // torch.get_num_threads())
    return max(1, min(share, TILE_ELEMENTS // (TILE_STEPS * d * n))), TILE_STEPS


def _tile_buffers(q: int, rows: int, g: int, n: int, dg: int, like: torch.Tensor,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The buffers a tile's passes write into in inference: nothing is allocated per tile."""
    decay = like.new_empty(q, rows, g, n, dg, dtype=dtype)  # then the states
    return {"decay": decay, "inputs": torch.empty_like(decay),
            "y": like.new_empty(q, rows, g, 1, dg, dtype=dtype),
            **{name: like.new_empty(q, rows, g, dg, dtype=dtype) for name in ("delta", "du")}}


def _tile(h, dl, u, z, B, C, A2, bias, D, softplus, buffers):
    """One tile of steps × sequences: (y (steps, sequences, g, dg), the state after it).

    The step-independent work is done for the whole tile in a few large passes (Δ, the decays
    2^{Δ A log2 e}, the inputs Δ u B, the contraction with C, D and the gate); what is left
    per step is one fused multiply-add ``h = decay ⊙ h + input``. With ``buffers`` (inference)
    the large passes write into its buffers, the states overwrite the decays and the final
    state is written into ``h``.
    """
    k, m = dl.shape[:2]
    buf = {name: t[:k, :m] for name, t in buffers.items()} if buffers else {}
    out = buf.get
    dl = torch.add(dl, bias, out=out("delta")) if bias is not None else dl.to(A2.dtype)
    if softplus:
        dl = F.softplus(dl)
    du = torch.mul(dl, u, out=out("du"))
    decay = torch.exp2(torch.mul(dl[..., None, :], A2, out=out("decay")), out=out("decay"))
    x = torch.mul(du[..., None, :], B[..., None], out=out("inputs"))
    states, state = [], h
    for t in range(k):
        state = torch.addcmul(x[t], decay[t], state, out=decay[t] if buf else None)
        states.append(state)
    hs = decay if buf else torch.stack(states)
    y = torch.matmul(C[..., None, :], hs, out=out("y")).squeeze(-2)
    if D is not None:
        y = y.addcmul_(u, D) if buf else torch.addcmul(y, u, D)
    if z is not None:
        gate = F.silu(z.to(y.dtype))
        y = y.mul_(gate) if buf else y * gate
    return y, h.copy_(state) if buf else state
