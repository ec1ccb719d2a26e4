"""The STFT front end: n_fft 2048, hop 441, periodic Hann, centred, reflect-padded."""

from __future__ import annotations

import torch

from bsmamba2.model.config import BSMamba2Config


def _window(cfg: BSMamba2Config, like: torch.Tensor) -> torch.Tensor:
    dtype = like.real.dtype if like.is_complex() else like.dtype
    return torch.hann_window(cfg.n_fft, periodic=True, device=like.device, dtype=dtype)


def stft(audio: torch.Tensor, cfg: BSMamba2Config) -> torch.Tensor:
    """(..., samples) real → (..., 1025, T) complex with T = samples // hop + 1."""
    shape = audio.shape
    spec = torch.stft(
        audio.reshape(-1, shape[-1]),
        cfg.n_fft,
        cfg.hop_length,
        window=_window(cfg, audio),
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    return spec.reshape(*shape[:-1], *spec.shape[-2:])


def istft(spec: torch.Tensor, cfg: BSMamba2Config, length: int | None = None) -> torch.Tensor:
    """Inverse of :func:`stft`; without ``length`` it gives hop·(T−1) samples, as the official code."""
    shape = spec.shape
    audio = torch.istft(
        spec.reshape(-1, *shape[-2:]),
        cfg.n_fft,
        cfg.hop_length,
        window=_window(cfg, spec),
        center=True,
        normalized=False,
        onesided=True,
        length=length,
    )
    return audio.reshape(*shape[:-2], audio.shape[-1])
