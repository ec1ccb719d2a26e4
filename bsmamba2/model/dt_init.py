"""Δ's bias at initialisation, shared by the Mamba mixers (Mamba-2, Mamba-3, ...)."""

from __future__ import annotations

import math

import torch


def init_dt_bias(nheads: int, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_floor: float = 1e-4) -> torch.Tensor:
    """Inverse softplus of Δ ~ exp(U(log dt_min, log dt_max)), Δ ≥ dt_floor (the official init of
    Mamba-2, Mamba-3 and Mamba-1's dt_proj.bias), so that softplus(dt + dt_bias) starts at such a Δ."""
    dt = torch.exp(torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_floor)
    return dt + torch.log(-torch.expm1(-dt))
