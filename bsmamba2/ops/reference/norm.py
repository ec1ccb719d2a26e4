"""Gated RMSNorm in PyTorch: the oracle of the Triton kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bsmamba2.ops.reference.common import compute_dtype, eager_inference


def gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    group_size: int | None = None,
) -> torch.Tensor:
    """RMSNorm(x · SiLU(z)) · weight over groups of the last axis (gate before norm).

    group_size None means one group spanning the whole last axis (Mamba-2 with ngroups 1).
    """
    cdt = compute_dtype(x)
    d = x.shape[-1]
    gs = d if group_size is None else group_size
    if d % gs:
        raise ValueError(f"last dimension {d} is not a multiple of group_size {gs}")
    if not eager_inference(x, z, weight):
        y = x.to(cdt)
        if z is not None:
            y = y * F.silu(z.to(cdt))
        yg = y.view(*y.shape[:-1], d // gs, gs)
        yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + eps)
        return (yg.view_as(y) * weight.to(cdt)).to(x.dtype)
    # The same arithmetic in fewer passes over the activations.
    y = x.to(cdt, copy=True) if z is None else F.silu(z.to(cdt, copy=True), inplace=True).mul_(x)
    yg = y.view(*y.shape[:-1], d // gs, gs)
    ms = torch.linalg.vector_norm(yg, dim=-1, keepdim=True).square_().div_(gs)
    yg.mul_(weight.to(cdt).view(d // gs, gs))
    return torch.mul(yg, ms.add_(eps).rsqrt_(), out=x.new_empty(yg.shape)).view(x.shape)
