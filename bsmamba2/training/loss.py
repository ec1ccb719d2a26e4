"""The training loss of the official code (spec §3).

``L = 10 · mean|ŷ − y| + Σ_w mean|STFT_w(ŷ) − STFT_w(y)|`` for window lengths
w ∈ {4096, 2048, 1024, 512, 256}: periodic Hann of length w, n_fft = max(w, 2048), hop 147,
centred (reflect padding), unnormalised; ``|·|`` is the modulus of the complex difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

WINDOWS: tuple[int, ...] = (4096, 2048, 1024, 512, 256)
HOP = 147
MIN_N_FFT = 2048
TIME_WEIGHT = 10.0


class MultiResolutionLoss(nn.Module):
    """``forward(estimate, target)`` on audio ``(..., samples)``; always computed in float32."""

    def __init__(
        self,
        windows: Sequence[int] = WINDOWS,
        hop: int = HOP,
        min_n_fft: int = MIN_N_FFT,
        time_weight: float = TIME_WEIGHT,
    ) -> None:
        super().__init__()
        self.windows, self.hop, self.min_n_fft, self.time_weight = tuple(windows), hop, min_n_fft, time_weight
        for w in self.windows:  # not persistent: checkpoints hold only the model's weights
            self.register_buffer(f"window_{w}", torch.hann_window(w, periodic=True), persistent=False)

    def _stft(self, audio: torch.Tensor, w: int) -> torch.Tensor:
        return torch.stft(
            audio,
            n_fft=max(w, self.min_n_fft),
            hop_length=self.hop,
            win_length=w,
            window=getattr(self, f"window_{w}"),
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if estimate.shape != target.shape:
            raise ValueError(
                f"estimate {tuple(estimate.shape)} and target {tuple(target.shape)} differ in shape"
            )
        with torch.autocast(estimate.device.type, enabled=False):
            est = estimate.float().reshape(-1, estimate.shape[-1])
            tgt = target.float().reshape(-1, target.shape[-1])
            loss = self.time_weight * (est - tgt).abs().mean()
            for w in self.windows:
                loss = loss + (self._stft(est, w) - self._stft(tgt, w)).abs().mean()
        return loss
