"""Stand-in models with the BSMamba2 interface, for tests of what wraps a model."""

from __future__ import annotations

import torch
from torch import nn

from bsmamba2.model import BSMamba2Config


class MaskModel(nn.Module):
    """The BSMamba2 interface (``config``, complex spec in, stems out) with a constant mask."""

    def __init__(
        self, gain: float = 1.0, stereo: bool = True, n_stems: int = 1, targets: tuple[str, ...] = ()
    ) -> None:
        super().__init__()
        self.config = BSMamba2Config(
            dim=8, depth=1, expand=2, headdim=16, d_state=4, stereo=stereo, n_stems=n_stems, targets=targets
        )
        self.gain = gain

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return torch.stack([spec * self.gain * (i + 1) for i in range(self.config.n_stems)], dim=1)
