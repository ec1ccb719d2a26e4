"""Band split (frequency bands → tokens) and the per-band mask estimators."""

from __future__ import annotations

import torch
from torch import nn

from bsmamba2.model.norms import BandRMSNorm


def band_widths(bands: tuple[int, ...], channels: int) -> list[int]:
    """Real features per band: bins × channels × (re, im)."""
    return [b * channels * 2 for b in bands]


class BandSplit(nn.Module):
    """(batch, T, features) → (batch, T, n_bands, dim): RMSNorm + Linear per band."""

    def __init__(self, dim: int, widths: list[int]) -> None:
        super().__init__()
        self.widths = widths
        self.to_features = nn.ModuleList(
            [nn.Sequential(BandRMSNorm(w), nn.Linear(w, dim)) for w in widths]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.split(self.widths, dim=-1)
        return torch.stack([f(p) for f, p in zip(self.to_features, parts, strict=True)], dim=-2)


class MaskEstimator(nn.Module):
    """(batch, T, n_bands, dim) → (batch, T, features): Linear-Tanh-Linear-GLU per band."""

    def __init__(self, dim: int, widths: list[int], expansion: int = 4) -> None:
        super().__init__()
        hidden = dim * expansion
        self.to_freqs = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * w)),
                    nn.GLU(dim=-1),
                )
                for w in widths
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([f(x[..., k, :]) for k, f in enumerate(self.to_freqs)], dim=-1)
