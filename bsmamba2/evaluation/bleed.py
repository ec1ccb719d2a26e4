"""bleedless and fullness: how much of other sources an estimate lets through, and how much of
its own source it keeps, from mel spectrograms in dB (the MVSep/MSST metrics, as ZFTurbo
defines them; the official BSMamba2 code reports them too, with reference and estimate swapped).

For reference and estimate ``(channels, samples)``: a magnitude STFT (Hann window of 2048,
hop 441, centred frames over zero padding), 512 mel bands (librosa's Slaney filterbank,
0 Hz to half the sample rate), ``20·log10(max(·, 1e-10))`` dB floored at 80 dB below the
spectrogram's peak, then ``d = estimate_dB − reference_dB`` over every channel, band and frame:

- bleedless = 100 / (1 + mean of the positive ``d``): energy the estimate has and the
  reference lacks (bleed) lowers it;
- fullness = 100 / (1 + mean of −``d`` over the negative ``d``): energy missing from the
  estimate lowers it.

Both are 100 for an estimate equal to its reference, and 100 when no ``d`` has that sign.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

N_FFT = 2048
HOP = 441
N_MELS = 512
TOP_DB = 80.0
AMIN = 1e-10  # floor of the magnitudes before the logarithm
_FRAMES = 2048  # STFT frames computed at once: bounds memory on long tracks


def mel_filterbank(rate: int) -> torch.Tensor:
    """librosa's mel filterbank (Slaney scale and area normalisation), ``(N_MELS, N_FFT // 2 + 1)``.

    512 bands over 1025 FFT bins leave some of the narrow low bands without a bin (librosa
    warns, silenced here): they sit at the 80 dB floor in both spectrograms, as in the
    definition.
    """
    import librosa  # imported here: only evaluation needs it

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Empty filters detected", UserWarning)
        return torch.from_numpy(librosa.filters.mel(sr=rate, n_fft=N_FFT, n_mels=N_MELS))


def mel_db(audio: np.ndarray, rate: int) -> np.ndarray:
    """``(channels, samples)`` → float32 ``(channels, N_MELS, frames)`` mel spectrogram in dB,
    floored at ``TOP_DB`` below its peak; ``frames = 1 + samples // HOP`` (centred frames)."""
    x = torch.as_tensor(np.ascontiguousarray(audio, np.float32))
    padded = torch.nn.functional.pad(x, (N_FFT // 2, N_FFT // 2))  # centred frames, zeros around
    frames = 1 + x.shape[-1] // HOP
    window = torch.hann_window(N_FFT)
    bank = mel_filterbank(rate)
    out = np.empty((x.shape[0], N_MELS, frames), np.float32)
    for first in range(0, frames, _FRAMES):
        last = min(frames, first + _FRAMES)
        part = padded[:, first * HOP : (last - 1) * HOP + N_FFT]
        spec = torch.stft(part, N_FFT, HOP, window=window, center=False, return_complex=True).abs()
        out[:, :, first:last] = (20 * torch.log10(torch.clamp(bank @ spec, min=AMIN))).numpy()
    return np.maximum(out, out.max() - np.float32(TOP_DB))


def bleedless_fullness(reference: np.ndarray, estimate: np.ndarray, rate: int) -> tuple[float, float]:
    """(bleedless, fullness) of ``estimate`` against ``reference``; higher is better for
    both, 100 at most.

    Args:
        reference: ``(channels, samples)`` numpy array.
        estimate: the same shape (cut or pad it first, e.g. with :func:`.match_length`).
        rate: their sample rate in Hz (the mel filterbank spans 0 to ``rate / 2``).
    """
    if reference.shape != estimate.shape:
        raise ValueError(f"reference {reference.shape} and estimate {estimate.shape} differ in shape")
    diff = mel_db(estimate, rate) - mel_db(reference, rate)
    over, under = diff > 0, diff < 0
    bleed = np.sum(diff, where=over, dtype=np.float64) / over.sum() if over.any() else 0.0
    loss = -np.sum(diff, where=under, dtype=np.float64) / under.sum() if under.any() else 0.0
    return float(100 / (1 + bleed)), float(100 / (1 + loss))
