"""The Mamba-2 mixer, with the official parameter names, shapes and order."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from bsmamba2 import ops
from bsmamba2.model import recompute
from bsmamba2.model.dt_init import init_dt_bias
from bsmamba2.model.norms import GatedRMSNorm

_STATE_KEYS = {"dt_bias", "A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "norm.weight",
               "out_proj.weight"}


class Mamba2(nn.Module):
    """in_proj → causal conv + SiLU → SSD scan (+D) → gated RMSNorm → out_proj.

    ``in_proj`` yields z | x | B | C | dt; B and C are shared by the heads of a group.
    ``recompute`` (see :func:`bsmamba2.model.mixers.set_recompute`) trades backward time for
    activation memory while gradients are recorded; it changes no result. ``reverse`` makes it
    the mixer of the reversed sequence, in the sequence's own order (flip, mix, flip), as the
    backward direction of a bidirectional module: only the conv and the scan see the order
    of the steps, and the kernels walk it backwards, so nothing is flipped on the GPU.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 4,
        headdim: int = 64,
        ngroups: int = 1,
    ) -> None:
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.headdim = headdim
        self.ngroups = ngroups
        self.nheads = self.d_inner // headdim
        conv_dim = self.d_inner + 2 * ngroups * d_state
        # Registration order matters: it is the official state_dict / parameters() order.
        self.dt_bias = nn.Parameter(init_dt_bias(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads).uniform_(1, 16).log())
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.recompute = "none"
        self.reverse = False

    @staticmethod
    def infer_options(
        state: Mapping[str, torch.Tensor], d_model: int, ngroups: int = 1
    ) -> dict[str, int] | None:
        """The options from the mixer's tensors (keys relative to it), None if they are not a
        Mamba-2's. ``ngroups`` cannot be seen in them."""
        if set(state) != _STATE_KEYS:
            return None
        d_inner = state["norm.weight"].shape[0]
        nheads = state["A_log"].shape[0]
        conv_dim, _, d_conv = state["conv1d.weight"].shape
        return {"d_state": (conv_dim - d_inner) // (2 * ngroups), "d_conv": d_conv,
                "expand": d_inner // d_model, "headdim": d_inner // nheads, "ngroups": ngroups}

    def activation_width(self) -> int:
        """Elements per token of the widest activation of a forward: in_proj's z | x | B | C | dt
        (the separator's memory estimate, :mod:`bsmamba2.separation.batching`)."""
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
        if self.reverse and not ops.reverses_in_kernels(u):
            return self._mix_along(u.flip(1), False, project).flip(1)
        return self._mix_along(u, self.reverse, project)

    def _mix_along(self, u: torch.Tensor, reverse: bool, project: bool) -> torch.Tensor:
        b, length, _ = u.shape
        if torch.is_grad_enabled():
            # One product per piece: their input gradients add up in the backward, where the
            # split of one product would concatenate its pieces' gradients (a 1.2 GB write and
            # read per mixer on the paper model's training step).
            # Under autocast, cast u once: each product would save its own cast copy.
            if torch.is_autocast_enabled(u.device.type):
                u = u.to(torch.get_autocast_dtype(u.device.type))
            z, xbc, dt = (nn.functional.linear(u, w) for w in self.in_proj.weight.split(self._sizes()))
        else:
            z, xbc, dt = self.in_proj(u).split(self._sizes(), -1)
        y = self._scan(self._conv(xbc, reverse), dt, reverse)
        y = self.norm(y.reshape(b, length, self.d_inner), z)
        return self.out_proj(y) if project else y

    def _sizes(self) -> list[int]:
        """Widths of in_proj's z, x | B | C and dt."""
        return [self.d_inner, self.d_inner + 2 * self.ngroups * self.d_state, self.nheads]

    def _conv(self, xbc: torch.Tensor, reverse: bool) -> torch.Tensor:
        weight, bias = self.conv1d.weight.squeeze(1), self.conv1d.bias
        return ops.causal_conv1d(xbc, weight, bias, "silu", reverse=reverse)

    def _scan(self, xbc: torch.Tensor, dt: torch.Tensor, reverse: bool) -> torch.Tensor:
        """The SSD scan of the conv's output: (b, length, heads, headdim). The mixer's costly
        call: under ``recompute="cheap"`` its output is kept, not recomputed."""
        b, length, _ = xbc.shape
        gn = self.ngroups * self.d_state
        x, B, C = ops.split_channels(xbc, [self.d_inner, gn, gn])
        return recompute.costly(lambda out: ops.ssd_scan(
            x.reshape(b, length, self.nheads, self.headdim),
            dt,
            -torch.exp(self.A_log.float()),
            B.reshape(b, length, self.ngroups, self.d_state),
            C.reshape(b, length, self.ngroups, self.d_state),
            self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            reverse=reverse,
            out=out,
        ))

    def warm_up_calls(self, u: torch.Tensor) -> dict[str, Callable[[], object]]:
        """The kernel-launching stages of an inference forward on ``u`` (conv, scan, gated
        norm), each on its own: inputs laid out as the forward lays them out (in_proj's split
        views, the conv's and the scan's fresh outputs), so each call launches the kernel
        variant the forward launches without waiting for the stage before. For compiling the
        kernels at once (:mod:`bsmamba2.separation.warmup`); the results mean nothing."""
        b, length, _ = u.shape
        reverse = self.reverse and ops.reverses_in_kernels(u)
        z, xbc, dt = self.in_proj(u).split(self._sizes(), -1)
        conv_out, scan_out = xbc.new_empty(xbc.shape), xbc.new_empty(b, length, self.d_inner)
        return {
            "conv": lambda: self._conv(xbc, reverse),
            "scan": lambda: self._scan(conv_out, dt, reverse),
            "norm": lambda: self.norm(scan_out, z),
        }
