"""The separator's inverse STFT without a host synchronisation.

``torch.istft`` checks that the window's overlap-add envelope has no zero in the output
(``window_envelop.abs().min()`` read with ``.item()``): on CUDA that waits for every kernel
queued before it, so each batch's submit waited for the whole model (the host could not cut,
add or write meanwhile; measured on the H200: a submit of 4 segments returned after 67 ms,
when the GPU finished, docs/benchmarks.md). This is the same computation as ``torch.istft``
for :func:`bsmamba2.model.istft`'s settings (centred, one-sided, periodic Hann window of
``n_fft``, not normalised), op for op (the inverse real FFT, the window, the overlap-add as
``unfold_backward``, the division by the envelope), so the bits are the same; the envelope
depends only on the frame count and the output length, so it is computed and checked once
per (frames, length, device) and kept.
"""

from __future__ import annotations

import threading

import torch

from bsmamba2.errors import BSMamba2Error
from bsmamba2.model.config import BSMamba2Config

_Key = tuple[int, int, int, int, torch.device, torch.dtype]
_ENVELOPES: dict[_Key, torch.Tensor] = {}
_LOCK = threading.Lock()  # the warm-up's threads and the separation may ask at once


def _window(cfg: BSMamba2Config, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.hann_window(cfg.n_fft, periodic=True, device=device, dtype=dtype)


def _envelope(cfg: BSMamba2Config, frames: int, length: int, device: torch.device, dtype: torch.dtype
              ) -> torch.Tensor:
    """The squared window overlap-added over ``frames`` frames, centred and cut to ``length``
    samples, checked once on the host as torch checks it: a zero (or a ``length`` past the
    last frame, whose window ends at zero) is an error."""
    key = (cfg.n_fft, cfg.hop_length, frames, length, device, dtype)
    with _LOCK:
        envelope = _ENVELOPES.get(key)
    if envelope is not None:
        return envelope
    n_fft, hop = cfg.n_fft, cfg.hop_length
    total = n_fft + hop * (frames - 1)
    squared = _window(cfg, device, dtype).pow(2).expand(1, frames, n_fft)
    envelope = torch.ops.aten.unfold_backward(squared, [1, total], 1, n_fft, hop)
    start = n_fft // 2
    envelope = envelope[:, start : min(start + length, total)]
    if bool(envelope.abs().min() < 1e-11):
        raise BSMamba2Error(f"inverse STFT: the window's overlap-add is zero somewhere ({frames} frames)")
    with _LOCK:
        return _ENVELOPES.setdefault(key, envelope)


def istft(spec: torch.Tensor, cfg: BSMamba2Config, length: int) -> torch.Tensor:
    """(..., n_fft // 2 + 1, T) complex → (..., length) real, as :func:`bsmamba2.model.istft`
    (the same bits) but without waiting for the device."""
    shape = spec.shape
    frames_in = spec.reshape(-1, *shape[-2:])
    batch, frames = frames_in.shape[0], frames_in.shape[-1]
    n_fft, hop = cfg.n_fft, cfg.hop_length
    window = _window(cfg, spec.device, spec.real.dtype)
    frames_out = torch.fft.irfft(frames_in.transpose(1, 2), n=n_fft, dim=-1) * window.view(1, 1, n_fft)
    total = n_fft + hop * (frames - 1)
    audio = torch.ops.aten.unfold_backward(frames_out, [batch, total], 1, n_fft, hop)
    start = n_fft // 2
    envelope = _envelope(cfg, frames, length, spec.device, spec.real.dtype)  # raises past the frames' end
    audio = audio[:, start : start + length] / envelope
    return audio.reshape(*shape[:-2], length)
