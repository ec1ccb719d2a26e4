"""Causal depthwise conv1d in PyTorch: the oracle of the Triton kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bsmamba2.ops.reference.common import compute_dtype, eager_inference


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Causal depthwise conv1d on channel-last input: x (b,l,d), weight (d,w), bias (d).

    y_t = Σ_k weight[:, k] · x_{t-w+1+k} + bias (zeros before the start), then SiLU
    when activation == "silu". A sum of shifted products: no transposes, exact.
    """
    if activation not in (None, "silu"):
        raise ValueError(f"unsupported activation {activation!r}")
    cdt = compute_dtype(x)
    width = weight.shape[-1]
    xs, w = x.to(cdt), weight.to(cdt)
    y = xs * w[:, -1] if bias is None else torch.addcmul(bias.to(cdt), xs, w[:, -1])
    for k in range(width - 1):
        shift = width - 1 - k  # tap k sees x_{t-shift}; earlier samples are zero
        if shift < xs.shape[1]:
            y[:, shift:].addcmul_(xs[:, :-shift], w[:, k])
    if activation == "silu":
        y = F.silu(y, inplace=eager_inference(x, weight, bias))
    return y.to(x.dtype)
