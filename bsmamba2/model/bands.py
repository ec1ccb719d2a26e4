"""Band split (frequency bands → tokens) and the per-band mask estimators.

Each band has its own norm, linear layers and parameters, under the official names. Bands of
equal width (consecutive in every band layout: 24 × 2 bins, 12 × 4, ...) run as one batched
product over their stacked weights, so the paper model's 62 bands take 7 launches per layer
instead of 62: the same function, with far fewer kernel launches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bsmamba2.model.norms import BandRMSNorm


def band_widths(bands: tuple[int, ...], channels: int) -> list[int]:
    """Real features per band: bins × channels × (re, im)."""
    return [b * channels * 2 for b in bands]


def equal_width_runs(widths: list[int]) -> list[range]:
    """The bands as maximal runs of consecutive bands of the same width."""
    runs, start = [], 0
    for k in range(1, len(widths) + 1):
        if k == len(widths) or widths[k] != widths[start]:
            runs.append(range(start, k))
            start = k
    return runs


def _batched_linear(x: torch.Tensor, layers: list[nn.Linear]) -> torch.Tensor:
    """(n, M, in) → (n, M, out): the i-th of ``layers`` applied to ``x[i]``, in one launch."""
    weight = torch.stack([layer.weight for layer in layers])  # (n, out, in)
    bias = torch.stack([layer.bias for layer in layers]).unsqueeze(1)  # (n, 1, out)
    return torch.baddbmm(bias, x, weight.transpose(1, 2))


class BandSplit(nn.Module):
    """(batch, T, features) → (batch, T, n_bands, dim): RMSNorm + Linear per band.

    Under the CPU's bf16 autocast it computes in float32: it is the model's first layer, on
    the spectrogram itself, and its ~1 % of the FLOPs in float32 cost little on a CPU but take
    a fifth off the golden model's bf16 error (``--precision auto`` is bf16 on such CPUs).
    """

    def __init__(self, dim: int, widths: list[int]) -> None:
        super().__init__()
        self.widths = widths
        self.runs = equal_width_runs(widths)
        self.to_features = nn.ModuleList(
            [nn.Sequential(BandRMSNorm(w), nn.Linear(w, dim)) for w in widths]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return self._split(x.float())
        return self._split(x)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])  # (M, features)
        tokens, offset = [], 0
        for run in self.runs:
            width = self.widths[run.start]
            part = x[:, offset:offset + len(run) * width].reshape(x.shape[0], len(run), width)
            offset += len(run) * width
            gamma = torch.stack([self.to_features[k][0].gamma for k in run])  # (n, width)
            part = F.normalize(part, dim=-1) * width**0.5 * gamma  # BandRMSNorm of each band
            out = _batched_linear(part.transpose(0, 1), [self.to_features[k][1] for k in run])
            tokens.append(out.transpose(0, 1))  # (M, n, dim)
        return torch.cat(tokens, dim=1).reshape(*lead, len(self.widths), -1)


class MaskEstimator(nn.Module):
    """(batch, T, n_bands, dim) → (batch, T, features): Linear-Tanh-Linear-GLU per band."""

    def __init__(self, dim: int, widths: list[int], expansion: int = 4) -> None:
        super().__init__()
        hidden = dim * expansion
        self.runs = equal_width_runs(widths)
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
        lead = x.shape[:-2]
        x = x.reshape(-1, *x.shape[-2:]).transpose(0, 1)  # (n_bands, M, dim)
        masks = []
        for run in self.runs:
            mlps = [self.to_freqs[k][0] for k in run]
            hidden = torch.tanh(_batched_linear(x[run.start:run.stop], [mlp[0] for mlp in mlps]))
            out = F.glu(_batched_linear(hidden, [mlp[2] for mlp in mlps]), dim=-1)  # (n, M, width)
            masks.append(out.transpose(0, 1).flatten(1))  # (M, n · width), band by band
        return torch.cat(masks, dim=-1).reshape(*lead, -1)
