"""Separation metrics: museval-v4-exact windowed SDR (cSDR) and whole-track uSDR, fast.

Array convention (everywhere in this module): time is the LAST axis and channels the one
before it, as the Separator returns them:

- one source: ``(channels, samples)``
- several sources of one track: ``(sources, channels, samples)``
- :func:`usdr_batch`: any leading axes ``(..., channels, samples)``

Inputs may be numpy arrays or torch tensors (CPU or GPU; no gradient flows). On the CPU the
sums run in numpy (einsum), on a GPU in torch; both in float64, like museval, so the result does
not depend on the input precision or on the device. Memory stays bounded: long tracks are
processed a chunk of ~24 s at a time.

Why the fast path is exact: in museval's "images" mode (bss_eval v4, the MUSDB18 protocol) the
distortion components of a window add up to ``ŝ − s``, so its SDR is ``10·log10(Σ s² / Σ (ŝ − s)²)``
over that window. museval only spends its time on SIR/SAR/ISR, which cSDR does not need.

museval rules reproduced here:

- windows of ``window`` samples every ``hop`` samples, the incomplete tail dropped; a signal
  not longer than one window is a single window over all of it;
- a window is NaN for *every* source when any reference or any estimate of the track is
  digitally silent in it — "silent" meaning museval's test: the sum over channels is exactly 0
  at every sample of the window;
- an estimate longer than its reference is truncated, a shorter one zero-padded at the end;
- a window whose error energy is exactly 0 has SDR +inf here, and :func:`csdr` ignores it
  like a NaN window. museval itself gives +inf there only when the whole track is identical
  (its JSON then stores NaN); where just some windows are, its least-squares projection
  leaves rounding error and it reports a finite ~300–450 dB that enters its median. Such
  windows only arise from copied samples; we keep the exact +inf rather than imitate noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: museval's window and hop: 1 s at MUSDB18's 44.1 kHz.
WINDOW = 44100
HOP = 44100
#: Regulariser of uSDR (both energies), as in the MDX challenge definition.
USDR_EPS = 1e-7
# Samples processed at once (per source and channel): bounds memory on hour-long tracks.
_CHUNK_SAMPLES = 1 << 20


def _on_cpu(x: Any) -> bool:
    return not isinstance(x, torch.Tensor) or x.device.type == "cpu"


def _numpy(x: Any) -> np.ndarray:
    """A numpy view of ``x``; half precisions widened to float32 (exactly)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _tensor(x: Any, device: torch.device) -> torch.Tensor:
    tensor = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if not tensor.is_floating_point():
        tensor = tensor.double()
    return tensor.to(device)


def _accumulator(device: torch.device) -> torch.dtype:
    """float64 everywhere but on Apple MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _mix(x: Any) -> Any:
    """Sum over the channel axis (axis 1 of (sources, channels, samples)), as museval tests it."""
    return x[:, 0] if x.shape[1] == 1 else x[:, 0] + x[:, 1] if x.shape[1] == 2 else x.sum(1)


# Two implementations of the same sums: numpy (einsum, several times faster than torch on the
# CPU) and torch (for GPUs). Both take (sources, channels, samples) chunks and return, per
# window: signal energy (sources, n), error energy (sources, n), silent (n,); float64.


def _window_sums_numpy(r: np.ndarray, e: np.ndarray, window: int, hop: int):
    def windows(x: np.ndarray) -> np.ndarray:
        return np.lib.stride_tricks.sliding_window_view(x, window, axis=-1)[..., ::hop, :]

    diff = np.subtract(e, r, dtype=np.float64)  # exact for float32 inputs
    signal = np.einsum("scwt,scwt->sw", windows(r), windows(r), dtype=np.float64)
    error = np.einsum("scwt,scwt->sw", windows(diff), windows(diff))
    sounding = windows(_mix(r)).any(axis=-1).all(axis=0) & windows(_mix(e)).any(axis=-1).all(axis=0)
    return signal, error, ~sounding


def _window_sums_torch(r: torch.Tensor, e: torch.Tensor, window: int, hop: int):
    dtype = _accumulator(r.device)
    diff = e.to(dtype=dtype, copy=True).sub_(r)

    def energy(x: torch.Tensor) -> torch.Tensor:
        per_channel = torch.linalg.vector_norm(x.unfold(-1, window, hop), dim=-1, dtype=dtype)
        return per_channel.square().sum(dim=1)

    def sounding(x: torch.Tensor) -> torch.Tensor:
        return _mix(x).unfold(-1, window, hop).any(dim=-1).all(dim=0)

    return energy(r), energy(diff), ~(sounding(r) & sounding(e))


def _total_sums_numpy(r: np.ndarray, e: np.ndarray):
    diff = np.subtract(e, r, dtype=np.float64)
    return (
        np.einsum("...ct,...ct->...", r, r, dtype=np.float64),
        np.einsum("...ct,...ct->...", diff, diff),
    )


def _total_sums_torch(r: torch.Tensor, e: torch.Tensor):
    dtype = _accumulator(r.device)
    diff = e.to(dtype=dtype, copy=True).sub_(r)
    norm = torch.linalg.vector_norm
    return norm(r, dim=(-2, -1), dtype=dtype).square(), norm(diff, dim=(-2, -1)).square()


def match_length(reference: Any, estimate: Any) -> Any:
    """``estimate`` cut or zero-padded at the end to the length of ``reference`` (as museval).

    Args:
        reference: any array or tensor, time on the last axis.
        estimate: the same kind; a torch tensor stays a torch tensor.
    """
    ref_len, est_len = reference.shape[-1], estimate.shape[-1]
    if est_len >= ref_len:
        return estimate[..., :ref_len]
    if isinstance(estimate, torch.Tensor):
        return torch.nn.functional.pad(estimate, (0, ref_len - est_len))
    pad = [(0, 0)] * (estimate.ndim - 1) + [(0, ref_len - est_len)]
    return np.pad(estimate, pad)


def _check_shapes(reference: Any, estimate: Any, min_ndim: int) -> None:
    if reference.ndim < min_ndim or reference.shape[:-1] != estimate.shape[:-1]:
        raise ValueError(
            f"reference {tuple(reference.shape)} and estimate {tuple(estimate.shape)} must have the "
            f"same (..., channels) axes and at least {min_ndim} dimensions (time last)"
        )


def usdr_batch(reference: Any, estimate: Any) -> Any:
    """uSDR in dB of each item: ``10·log10((Σs² + 1e-7) / (Σ(s − ŝ)² + 1e-7))``.

    Sums run over channels and samples. Meant for validation during training, on GPU
    batches too.

    Args:
        reference: ``(..., channels, samples)``, numpy or torch (any device).
        estimate: the same leading axes; cut or zero-padded to the reference's length (as
            museval).

    Returns:
        shape ``(...)``: a float64 torch tensor on the reference's device for torch inputs,
        a numpy float64 array (0-d for 2-D inputs) otherwise.
    """
    _check_shapes(reference, estimate, 2)
    estimate = match_length(reference, estimate)
    cpu = _on_cpu(reference)
    if cpu:
        ref, est, sums = _numpy(reference), _numpy(estimate), _total_sums_numpy
    else:
        ref, est, sums = reference.detach(), _tensor(estimate, reference.device), _total_sums_torch
    signal, error = 0.0, 0.0
    for start in range(0, ref.shape[-1], _CHUNK_SAMPLES):
        part = slice(start, start + _CHUNK_SAMPLES)
        chunk_signal, chunk_error = sums(ref[..., part], est[..., part])
        signal, error = signal + chunk_signal, error + chunk_error
    if cpu:
        result = 10 * np.log10((signal + USDR_EPS) / (error + USDR_EPS))
        return torch.from_numpy(np.asarray(result)) if isinstance(reference, torch.Tensor) else result
    return 10 * torch.log10((signal + USDR_EPS) / (error + USDR_EPS))


def usdr(reference: Any, estimate: Any) -> float:
    """Whole-track uSDR in dB of one source (see :func:`usdr_batch`).

    Args:
        reference: ``(channels, samples)`` (mono: ``(1, samples)``), numpy or torch.
        estimate: the same channels; cut or zero-padded to the reference's length.
    """
    if reference.ndim != 2:
        raise ValueError(f"usdr expects (channels, samples) arrays, got {tuple(reference.shape)}")
    return float(usdr_batch(reference, estimate))


def n_windows(length: int, window: int = WINDOW, hop: int = HOP) -> int:
    """Number of museval windows in a signal of ``length`` samples (one window, all of it,
    when ``length`` is not longer than ``window``), windows starting every ``hop`` samples."""
    if window >= length:
        return 1
    return (length - window + hop) // hop


def framewise_sdr(
    references: Any,
    estimates: Any,
    window: int = WINDOW,
    hop: int = HOP,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Per-window SDR in dB exactly as museval v4 (``museval.evaluate``) computes it.

    Args:
        references: ``(sources, channels, samples)``, all sources of a track together (silence
            in any one of them makes the window NaN for all: museval's rule), or ``(channels,
            samples)`` for one source; numpy or torch.
        estimates: the same shape but for the length, cut or zero-padded to the references'.
        window: samples per window (museval: 1 s at 44.1 kHz).
        hop: samples between window starts.
        device: where to compute (default: where the references are; the CPU uses numpy).

    Returns:
        float64 ``(sources, n_windows)``, or ``(n_windows,)`` for one source; NaN for silent
        windows, +inf for a window with no error.
    """
    single = references.ndim == 2
    if single:
        references, estimates = references[None], estimates[None]
    _check_shapes(references, estimates, 3)
    estimates = match_length(references, estimates)
    device = torch.device(device) if device is not None else None
    on_cpu = _on_cpu(references) if device is None else device.type == "cpu"
    if on_cpu:
        ref, est, sums = _numpy(references), _numpy(estimates), _window_sums_numpy
    else:
        device = device or references.device
        ref, est, sums = _tensor(references, device), _tensor(estimates, device), _window_sums_torch
    length = ref.shape[-1]
    count = n_windows(length, window, hop)
    if length <= window:
        window = hop = length
    # Windows are processed a chunk at a time: a chunk starts on a window start.
    per_chunk = max(1, (_CHUNK_SAMPLES - window) // hop + 1)
    signal, error = np.empty((ref.shape[0], count)), np.empty((ref.shape[0], count))
    silent = np.empty(count, dtype=bool)
    for first in range(0, count, per_chunk):
        last = min(count, first + per_chunk)
        span = slice(first * hop, (last - 1) * hop + window)
        parts = sums(ref[..., span], est[..., span], window, hop)
        if sums is _window_sums_torch:
            parts = [part.cpu().numpy() for part in parts]
        signal[:, first:last], error[:, first:last], silent[first:last] = parts
    with np.errstate(divide="ignore", invalid="ignore"):
        sdr = 10 * np.log10(signal / error)
    sdr[:, silent] = np.nan
    return sdr[0] if single else sdr


def median_sdr(sdr: np.ndarray) -> np.ndarray:
    """Median over the last axis of the finite windows, NaN when none: museval's track score.

    Args:
        sdr: per-window values, windows on the last axis (as :func:`framewise_sdr` returns);
            ±inf windows count as NaN, as in museval's JSON files.
    """
    values = np.where(np.isfinite(sdr), sdr, np.nan)
    flat = values.reshape(-1, values.shape[-1])
    out = np.full(flat.shape[0], np.nan)
    for i, row in enumerate(flat):
        valid = row[~np.isnan(row)]
        if valid.size:
            out[i] = np.median(valid)
    return out.reshape(values.shape[:-1])


def csdr(
    references: Any,
    estimates: Any,
    window: int = WINDOW,
    hop: int = HOP,
    device: str | torch.device | None = None,
) -> Any:
    """museval's per-track SDR: median of :func:`framewise_sdr` over the valid windows.

    Args:
        references: as for :func:`framewise_sdr`.
        estimates: as for :func:`framewise_sdr`.
        window: as for :func:`framewise_sdr`.
        hop: as for :func:`framewise_sdr`.
        device: as for :func:`framewise_sdr`.

    Returns:
        a float64 array ``(sources,)``, or a float for one ``(channels, samples)`` source;
        NaN when no window is valid (e.g. a silent estimate, which museval itself rejects
        with an error).
    """
    per_window = framewise_sdr(references, estimates, window, hop, device)
    result = median_sdr(per_window)
    return float(result) if per_window.ndim == 1 else result
