"""What the reference ops share: their compute dtype, Δ, and the eager-inference test."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def prepare_dt(
    dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool, dtype: torch.dtype
) -> torch.Tensor:
    """Δ = softplus(dt + dt_bias) (each part optional), in the compute dtype."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    return F.softplus(dt) if dt_softplus else dt


def eager_inference(*tensors: torch.Tensor | None) -> bool:
    """Neither autograd (on these tensors) nor torch.compile records the work: the ops may
    then overwrite their temporaries and write into preallocated outputs, saving passes."""
    if torch.compiler.is_compiling():  # inductor fuses the passes itself
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))
