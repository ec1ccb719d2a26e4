"""Exponential moving average of the weights (decay 0.999, updated after every optimizer step)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


class EMA:
    """``ema ← decay · ema + (1 − decay) · w`` per parameter, kept in float32.

    Starts from the current weights (or from ``state``, the tensors of a checkpoint).
    :meth:`swap` exchanges the EMA and the live weights in place (validation, export).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        decay: float = 0.999,
        state: Sequence[torch.Tensor] | None = None,
    ):
        params = list(params)
        if state is not None and (
            len(state) != len(params) or any(s.shape != p.shape for s, p in zip(state, params, strict=True))
        ):
            raise ValueError(
                f"EMA state of {len(state)} tensors does not match the model's {len(params)} parameters"
            )
        source = params if state is None else state
        self.decay = decay
        pairs = zip(source, params, strict=True)
        self.shadow = [s.detach().to(device=p.device, dtype=torch.float32).clone() for s, p in pairs]

    @torch.no_grad()
    def update(self, params: Iterable[torch.Tensor]) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in params], 1.0 - self.decay)

    @torch.no_grad()
    def swap(self, params: Iterable[torch.Tensor]) -> None:
        """Exchange the contents of the live parameters and the EMA; calling it twice restores both."""
        for p, s in zip(params, self.shadow, strict=True):
            live = p.detach().clone()
            p.copy_(s)
            s.copy_(live)
