"""The three normalisations of BSMamba2 (each computed in float32 at least)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bsmamba2 import ops


class BandRMSNorm(nn.Module):
    """x / max(‖x‖₂, 1e-12) · √d · gamma: the band-split and final norm (no eps)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class RMSNorm(nn.Module):
    """x · rsqrt(mean(x²) + eps) · weight, computed in float32 (the block pre-norm)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.gated_rms_norm(x, None, self.weight, self.eps)


class GatedRMSNorm(nn.Module):
    """RMSNorm(x · SiLU(z)) · weight with groups: the Mamba-2 output norm."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return ops.gated_rms_norm(x, z, self.weight, self.eps, self.group_size)
