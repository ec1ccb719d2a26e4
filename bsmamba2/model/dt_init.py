"""Δ's bias at initialisation, shared by the Mamba mixers (Mamba-2, Mamba-3, ...)."""

from __future__ import annotations

import math

import torch


def init_dt_bias(nheads: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> torch.Tensor:
    """Inverse softplus of Δ ~ exp(U(log dt_min, log dt_max)), Δ ≥ 1e-4 (the official init of
    Mamba-2 and Mamba-3), so that softplus(dt + dt_bias) starts at such a Δ."""
    dt = torch.exp(torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))
