"""Residual mixer blocks (Mamba-2 by default, see :mod:`bsmamba2.model.mixers`) and the
bidirectional module that runs them both ways."""

from __future__ import annotations

import torch
from torch import nn

from bsmamba2.model.config import BSMamba2Config
from bsmamba2.model.mixers import build_mixer
from bsmamba2.model.norms import RMSNorm


class MambaBlock(nn.Module):
    """x ↦ mixer(norm(x)) + x."""

    def __init__(self, cfg: BSMamba2Config) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.dim)
        self.mixer = build_mixer(cfg.mixer, cfg.dim, cfg.mixer_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(self.norm(x)) + x


class BidirectionalMamba(nn.Module):
    """x + merge([fwd(x), flip(bwd(flip(x)))]) over the sequence axis of (batch, length, dim).

    The merge is the official 1×1 ConvTranspose1d (weight [2·dim, dim, 1]), applied as a
    matrix product. A mixer with a ``reverse`` attribute (Mamba-2) is made the mixer of the
    reversed sequence instead: the backward block then needs no flipped copies (every part
    of a block but the mixer works step by step).
    """

    def __init__(self, cfg: BSMamba2Config) -> None:
        super().__init__()
        self.forward_blocks = nn.ModuleList([MambaBlock(cfg)])
        self.backward_blocks = nn.ModuleList([MambaBlock(cfg)])
        self.linear = nn.ConvTranspose1d(2 * cfg.dim, cfg.dim, 1)
        backward_mixer = self.backward_blocks[0].mixer
        self.reverses = hasattr(backward_mixer, "reverse")
        if self.reverses:
            backward_mixer.reverse = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fwd = self.forward_blocks[0](x)
        bwd = self.backward_blocks[0](x) if self.reverses else self.backward_blocks[0](x.flip(1)).flip(1)
        merged = torch.cat([fwd, bwd], dim=-1)
        return x + nn.functional.linear(merged, self.linear.weight[:, :, 0].t(), self.linear.bias)
