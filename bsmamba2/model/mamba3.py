"""The Mamba-3 mixer (Lahoti et al., 2026), with the official parameter names, shapes and order.

Mamba-3 replaces Mamba-2's conv + SSD with: a data-dependent decay A_t = −heavy_tail(·)
(the official layer's activation since 2026-06, not the softplus of its first release), an
exponential-trapezoidal update mixing the current and the previous input, B/C RMS-normed
with a weight plus a per-head bias and rotated by data-dependent angles (a complex state),
and optionally multi-input multi-output (MIMO) updates of rank R. The scan is
:func:`bsmamba2.ops.mamba3_scan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bsmamba2 import ops
from bsmamba2.model import recompute
from bsmamba2.model.dt_init import init_dt_bias
from bsmamba2.ops.reference.mamba3 import halves_first

A_FLOOR = 1e-4


def heavy_tail(x: torch.Tensor) -> torch.Tensor:
    """1 + x for x ≥ 0, 1 / (1 − x) for x < 0: positive, continuous, slope 1 at 0."""
    return x.clamp_min(0) + torch.reciprocal(1 - x.clamp_max(0))


def rope_angles(d_state: int, rope_fraction: float) -> int:
    """How many angles rotate the state: ⌊d_state·fraction⌋ rounded down to even, halved."""
    rotated = int(d_state * rope_fraction)
    return (rotated - rotated % 2) // 2


class Mamba3(nn.Module):
    """in_proj → (z, x, B, C, Δ, A, trap, θ) → Mamba-3 scan (+D) → gate → out_proj.

    On (batch, length, d_model) tensors. ``mimo_rank`` 1 is SISO (rotation pairs (2j, 2j+1)),
    R > 1 is MIMO (pairs (j, j + N/2), x/z/y projected per rank by ``mimo_x/z/o``).
    ``outproj_norm`` applies a per-head RMSNorm to y before the SiLU(z) gate. The state dict
    is the official ``mamba_ssm.modules.mamba3.Mamba3``'s (``is_mimo = mimo_rank > 1``), so its
    weights load with ``strict=True``. ``chunk_size`` is the scan's chunk in steps (None: the
    official recommendation, 64 for SISO and 64 / R for MIMO, i.e. 64 rows of steps × ranks);
    it changes speed and memory, not results (up to rounding). The Triton kernels take the
    largest power of two up to it whose rows fit their tiles (64 rows, 32 in fp32).
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 128,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        rope_fraction: float = 0.5,
        outproj_norm: bool = False,
        mimo_rank: int = 1,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if rope_fraction not in (0.5, 1.0):
            raise ValueError(f"rope_fraction={rope_fraction}: expected 0.5 or 1.0")
        if mimo_rank < 1:
            raise ValueError(f"mimo_rank={mimo_rank}: expected 1 (SISO) or more (MIMO)")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size}: expected a positive number of steps (or None)")
        self.chunk_size = chunk_size or max(1, 64 // mimo_rank)
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"expand·d_model = {self.d_inner} is not a multiple of headdim {headdim}")
        self.d_state = d_state
        self.headdim = headdim
        self.ngroups = ngroups
        self.nheads = self.d_inner // headdim
        self.mimo_rank = mimo_rank
        self.outproj_norm = outproj_norm
        self.n_angles = rope_angles(d_state, rope_fraction)
        if self.n_angles < 1:
            raise ValueError(f"d_state={d_state} with rope_fraction={rope_fraction} rotates nothing")
        h, r, bc = self.nheads, mimo_rank, d_state * ngroups * mimo_rank
        # z | x | B | C | Δ | A | trap | θ
        self.sizes = [self.d_inner, self.d_inner, bc, bc, h, h, h, self.n_angles]
        # Registration order matters: it is the official state_dict / parameters() order.
        self.in_proj = nn.Linear(d_model, sum(self.sizes), bias=False)
        self.dt_bias = nn.Parameter(init_dt_bias(h))
        self.B_bias = nn.Parameter(torch.ones(h, r, d_state))
        self.C_bias = nn.Parameter(torch.ones(h, r, d_state))
        self.B_norm = _Weight(d_state)
        self.C_norm = _Weight(d_state)
        if self.mimo:
            self.mimo_x = nn.Parameter(torch.full((h, r, headdim), 1 / r))
            self.mimo_z = nn.Parameter(torch.ones(h, r, headdim))
            self.mimo_o = nn.Parameter(torch.full((h, r, headdim), 1 / r))
        self.D = nn.Parameter(torch.ones(h))
        if outproj_norm:
            self.norm = _Weight(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.recompute = "none"
        self.reverse = False
        if not self.mimo:  # in_proj's rows with B's and C's rotation pairs as (j, j + N/2): _mix
            rows = torch.arange(sum(self.sizes))
            start = 2 * self.d_inner
            rows[start:start + 2 * bc] = halves_first(rows[start:start + 2 * bc].view(-1, d_state)).flatten()
            self.register_buffer("halved_rows", rows, persistent=False)

    @staticmethod
    def infer_options(state: Mapping[str, torch.Tensor], d_model: int,
                      ngroups: int = 1) -> dict[str, Any] | None:
        """The options from the layer's own tensors (keys relative to it), or None when they are
        not a Mamba-3 layer's (no ``B_bias``)."""
        if "B_bias" not in state:
            return None
        nheads, rank, d_state = state["B_bias"].shape
        d_inner = state["out_proj.weight"].shape[1]
        in_rows = state["in_proj.weight"].shape[0]
        n_angles = in_rows - 2 * d_inner - 2 * d_state * ngroups * rank - 3 * nheads
        return {"d_state": d_state, "expand": d_inner // d_model, "headdim": d_inner // nheads,
                "ngroups": ngroups, "rope_fraction": 0.5 if n_angles == rope_angles(d_state, 0.5) else 1.0,
                "outproj_norm": "norm.weight" in state, "mimo_rank": rank}

    @property
    def mimo(self) -> bool:
        return self.mimo_rank > 1

    def activation_width(self) -> int:
        """Elements per token of the widest activation of a forward: in_proj's z | x | B | C | Δ |
        A | trap | θ, B and C per MIMO rank (the separator's memory estimate)."""
        return sum(self.sizes)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (batch, length, d_model) → (batch, length, d_model)."""
        return recompute.checkpointed(self._mix, u, self.recompute)

    def unprojected(self, u: torch.Tensor) -> torch.Tensor:
        """The forward without ``out_proj``: (batch, length, d_inner) in the scan's dtype, for a
        caller that folds ``out_proj`` into its own product (:class:`bsmamba2.model.blocks.
        BidirectionalMamba` in inference). No recompute: that is for training."""
        return self._mix(u, project=False)

    def _mix(self, u: torch.Tensor, project: bool = True) -> torch.Tensor:
        """``reverse``: the mixer of the reversed sequence, in its own order. Every part but the
        scan works step by step, so the scan's ``reverse`` makes it where its kernels walk
        backwards (inference); else u and the output are flipped (the scan's own reverse would
        flip its eight inputs)."""
        if self.reverse and (torch.is_grad_enabled() or not ops.reverses_in_kernels(u, "mamba3")):
            return self._mix_along(u.flip(1), False, project).flip(1)
        return self._mix_along(u, self.reverse, project)

    def _mix_along(self, u: torch.Tensor, reverse: bool, project: bool) -> torch.Tensor:
        b, length, _ = u.shape
        h, p, r, g, n = self.nheads, self.headdim, self.mimo_rank, self.ngroups, self.d_state
        # SISO: B's and C's rotation pairs (2j, 2j+1) made (j, j + N/2), the kernels' layout, by
        # in_proj's rows (a gather of the weight, not copies of q and k; the RMSNorm of an
        # n-vector is blind to the order of its columns): the scan's ``halved_pairs``
        weight = self.in_proj.weight if self.mimo else self.in_proj.weight[self.halved_rows]
        z, x, B, C, dd_dt, dd_A, trap, theta = F.linear(u, weight).split(self.sizes, -1)
        A = -heavy_tail(dd_A.to(self.dt_bias.dtype)).clamp_min(A_FLOOR)
        dt = F.softplus(dd_dt + self.dt_bias)
        qk_shape = (b, length, r, g, n) if self.mimo else (b, length, g, n)
        pairs = (lambda w: w) if self.mimo else halves_first
        # RMSNorm per n-vector, read in place from in_proj's output (the norm op: one pass, its
        # own backward; F.rms_norm with a bf16 input and an fp32 weight runs unfused, in ~6 passes)
        q = ops.gated_rms_norm(C, None, pairs(self.C_norm.weight).repeat(r * g), 1e-5, n).view(qk_shape)
        k = ops.gated_rms_norm(B, None, pairs(self.B_norm.weight).repeat(r * g), 1e-5, n).view(qk_shape)
        biases = (self.C_bias, self.B_bias) if self.mimo else (pairs(self.C_bias[:, 0]),
                                                                pairs(self.B_bias[:, 0]))
        z = z.reshape(b, length, h, p)
        gate_in_scan = not self.outproj_norm
        mimo = {"mimo_x": self.mimo_x, "mimo_z": self.mimo_z if gate_in_scan else None,
                "mimo_o": self.mimo_o if gate_in_scan else None} if self.mimo else {}
        y = ops.mamba3_scan(
            q, k, x.reshape(b, length, h, p),
            (A * dt).transpose(1, 2), dt.transpose(1, 2), trap.transpose(1, 2), *biases,
            theta.unsqueeze(2).expand(-1, -1, h, -1), self.D, z if gate_in_scan else None, **mimo,
            chunk_size=self.chunk_size, reverse=reverse, halved_pairs=not self.mimo,
        )
        if self.outproj_norm:  # RMSNorm per head, then the gate (per rank for MIMO)
            y = F.rms_norm(y, (p,), eps=1e-5) * self.norm.weight.view(h, p)
            if self.mimo:
                y = y * F.silu(z.unsqueeze(2) * self.mimo_z.transpose(0, 1))
                y = (y * self.mimo_o.transpose(0, 1)).sum(2)
            else:
                y = y * F.silu(z)
        y = y.reshape(b, length, self.d_inner)
        return self.out_proj(y.to(u.dtype)) if project else y


class Mamba3Mixer(Mamba3):
    """The ``mamba3`` mixer of BSMamba2 (:mod:`bsmamba2.model.mixers`): :class:`Mamba3` with the
    paper model's width by default — expand 4, as its Mamba-2 layers (the official default is 2)."""

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 128,
        expand: int = 4,
        headdim: int = 64,
        ngroups: int = 1,
        rope_fraction: float = 0.5,
        outproj_norm: bool = False,
        mimo_rank: int = 1,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(d_model, d_state=d_state, expand=expand, headdim=headdim, ngroups=ngroups,
                         rope_fraction=rope_fraction, outproj_norm=outproj_norm, mimo_rank=mimo_rank,
                         chunk_size=chunk_size)


class _Weight(nn.Module):
    """A norm's weight under the official submodule name (``B_norm.weight``, ``norm.weight``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
