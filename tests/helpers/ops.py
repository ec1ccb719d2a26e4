"""Inputs and float64 truths of the op tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

F64 = torch.float64


def ssd_inputs(b: int, length: int, h: int, p: int, n: int, g: int, dtype: torch.dtype = F64,
               requires_grad: bool = False) -> dict[str, torch.Tensor]:
    """Fresh random inputs in realistic ranges (Δ from softplus, A = -exp(U), no zeros)."""
    t = {
        "x": torch.randn(b, length, h, p, dtype=dtype),
        "dt": torch.randn(b, length, h, dtype=dtype) - 1.0,
        "A": -torch.exp(torch.rand(h, dtype=dtype) * 2.5),
        "B": torch.randn(b, length, g, n, dtype=dtype),
        "C": torch.randn(b, length, g, n, dtype=dtype),
        "D": torch.randn(h, dtype=dtype),
        "dt_bias": torch.randn(h, dtype=dtype) * 0.5,
        "initial_state": torch.randn(b, h, p, n, dtype=dtype),
    }
    for v in t.values():
        v.requires_grad_(requires_grad)
    return t


def conv_truth(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               activation: str | None) -> torch.Tensor:
    """An independent formulation: F.conv1d with left zero padding, in float64."""
    xt = x.double().transpose(1, 2)
    y = F.conv1d(F.pad(xt, (weight.shape[-1] - 1, 0)), weight.double().unsqueeze(1),
                 None if bias is None else bias.double(), groups=x.shape[-1])
    y = y.transpose(1, 2)
    return F.silu(y) if activation == "silu" else y


def norm_truth(x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor, eps: float,
               group_size: int | None) -> torch.Tensor:
    """The gated RMSNorm formula, in float64: x·SiLU(z), normalised per group of channels."""
    y = x.double() * (z.double() * torch.sigmoid(z.double()) if z is not None else 1.0)
    d = y.shape[-1]
    gs = group_size or d
    yg = y.reshape(*y.shape[:-1], d // gs, gs)
    yg = yg / torch.sqrt((yg**2).mean(-1, keepdim=True) + eps)
    return yg.reshape(y.shape) * weight.double()
