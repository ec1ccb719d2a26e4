"""The Mamba-1 mixer (mamba_ssm's ``mamba_simple.Mamba``), with the official parameter names,
shapes, order and initialisation; its scan is :func:`bsmamba2.ops.selective_scan`."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from bsmamba2 import ops
from bsmamba2.model import recompute
from bsmamba2.model.dt_init import init_dt_bias

_STATE_KEYS = {"A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
               "dt_proj.weight", "dt_proj.bias", "out_proj.weight"}


class Mamba(nn.Module):
    """in_proj → [x | z]; causal conv + SiLU on x; x_proj → [Δ_low | B | C]; Δ = softplus(dt_proj
    Δ_low + bias); selective scan (+D) gated by SiLU(z) → out_proj. No norm after the scan.

    Every channel of d_inner = expand·d_model has its own state of d_state with its own decays
    ``A = −exp(A_log)`` ([d_inner, d_state], S4D-real init A_n = −n); B and C are shared by all
    channels. ``Mamba(d_model)`` on (batch, length, d_model) tensors, with mamba_ssm's
    defaults; an official ``mamba_simple.Mamba`` state dict loads with ``strict=True``.
    ``recompute`` (see :func:`bsmamba2.model.mixers.set_recompute`) trades backward time for
    activation memory; it changes no result. ``reverse`` makes it the mixer of the reversed
    sequence, in the sequence's own order (flip, mix, flip), as the backward mixer of
    :class:`bsmamba2.model.blocks.BidirectionalMamba`: with the kernels the conv and the scan
    walk the steps backwards (no flipped copies), on the reference path it flips.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str | None = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank in ("auto", None) else int(dt_rank)
        d_inner = self.d_inner
        # Parameters come before submodules in the state dict, as in the official module.
        self.A_log = nn.Parameter(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1).log())
        self.D = nn.Parameter(torch.ones(d_inner))
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        std = self.dt_rank**-0.5
        with torch.no_grad():
            self.dt_proj.weight.uniform_(-std, std)
            self.dt_proj.bias.copy_(init_dt_bias(d_inner, dt_min, dt_max, dt_init_floor))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self.recompute = "none"
        self.reverse = False

    def activation_width(self) -> int:
        """Elements per token of the widest activation of a forward: in_proj's x | z, 2·d_inner
        (x_proj's Δ_low | B | C is narrower; the separator's memory estimate)."""
        return self.in_proj.out_features

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (batch, length, d_model) → (batch, length, d_model)."""
        return recompute.checkpointed(self._mix, u, self.recompute)

    def unprojected(self, u: torch.Tensor) -> torch.Tensor:
        """The forward without ``out_proj``: (batch, length, d_inner), for a caller that folds
        ``out_proj`` into its own product (:class:`bsmamba2.model.blocks.BidirectionalMamba`
        in inference). No recompute: that is for training."""
        return self._mix(u, project=False)

    def _mix(self, u: torch.Tensor, project: bool = True) -> torch.Tensor:
        if self.reverse and not ops.reverses_in_kernels(u, "selective"):
            return self._mix_along(u.flip(1), False, project).flip(1)
        return self._mix_along(u, self.reverse, project)

    def _mix_along(self, u: torch.Tensor, reverse: bool, project: bool) -> torch.Tensor:
        n, r = self.d_state, self.dt_rank
        if torch.is_grad_enabled() and self.in_proj.bias is None:
            # Two products, as in Mamba2: their input gradients add up in the backward, where
            # the split of one product would concatenate dx and dz. Under autocast u is cast
            # once (each product would save its own cast copy).
            if torch.is_autocast_enabled(u.device.type):
                u = u.to(torch.get_autocast_dtype(u.device.type))
            x, z = (nn.functional.linear(u, w) for w in self.in_proj.weight.chunk(2))
        else:
            x, z = self.in_proj(u).chunk(2, dim=-1)
        x = ops.causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu", reverse=reverse)
        dt_low, B, C = self.x_proj(x).split([r, n, n], dim=-1)
        delta = nn.functional.linear(dt_low, self.dt_proj.weight)  # the bias goes into the scan
        # (b, l, c) channel-last tensors as (b, c, l) views: the scan reads them in place.
        y = ops.selective_scan(
            x.transpose(1, 2), delta.transpose(1, 2), -torch.exp(self.A_log.float()),
            B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z.transpose(1, 2),
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True, reverse=reverse,
        ).transpose(1, 2)
        return self.out_proj(y) if project else y


class Mamba1Mixer(Mamba):
    """The ``mamba`` mixer of BSMamba2 (the official ``module_type: mamba``): :class:`Mamba`
    with the official model's options and defaults (expand 4; dt_rank None = ceil(dim/16))."""

    def __init__(self, d_model: int, *, d_state: int = 16, d_conv: int = 4, expand: int = 4,
                 dt_rank: int | None = None) -> None:
        super().__init__(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank)

    @staticmethod
    def infer_options(
        state: Mapping[str, torch.Tensor], d_model: int, ngroups: int = 1
    ) -> dict[str, int] | None:
        """The options from the mixer's tensors (keys relative to it), None if they are not a
        Mamba-1's (x_proj, dt_proj, a 2-D A_log)."""
        del ngroups  # Mamba-1 has no head groups
        if set(state) != _STATE_KEYS or state["A_log"].dim() != 2:
            return None
        d_inner, d_state = state["A_log"].shape
        return {"d_state": d_state, "d_conv": state["conv1d.weight"].shape[-1], "expand": d_inner // d_model,
                "dt_rank": state["dt_proj.weight"].shape[1]}
