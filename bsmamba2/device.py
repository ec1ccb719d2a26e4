"""Where and in what precision a model runs (``--device``, ``--precision``), one rule for
separation and evaluation.

torch is imported inside the functions: the command line offers these choices (and reports
bad inputs) without loading it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from bsmamba2.errors import BSMamba2Error

if TYPE_CHECKING:
    import torch

DEVICES = "auto (CUDA, else Apple's MPS, else the CPU), cpu, cuda, cuda:N or mps"
PRECISIONS = ("fp32", "bf16", "fp16")
"""Autocast precisions; ``auto`` is bf16 on CUDA and fp32 on the CPU."""
_DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def auto_device(cuda: bool, mps: bool) -> str:
    """``--device auto``: CUDA if there is a GPU, else Apple's MPS, else the CPU."""
    return "cuda" if cuda else "mps" if mps else "cpu"


def mps_available() -> bool:
    """Whether this torch and machine have Apple's Metal backend (macOS on Apple silicon)."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def fft_device(device: torch.device) -> torch.device:
    """Where the STFT and iSTFT run: on ``device``, except on MPS, whose complex FFT support
    is incomplete across torch versions: there on the CPU (as demucs does), the model on MPS."""
    import torch

    return torch.device("cpu") if device.type == "mps" else device


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → :func:`auto_device` (the first CUDA device, else MPS, else the CPU)."""
    import torch

    if str(device) == "auto":
        return torch.device(auto_device(torch.cuda.is_available(), mps_available()))
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BSMamba2Error(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "mps" and not mps_available():
        raise BSMamba2Error(f"device {device!r} requested but Apple's MPS is not available here")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BSMamba2Error(f"device {device!r} requested but CUDA is not available here")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise BSMamba2Error(
            f"device {device!r} requested but there are {torch.cuda.device_count()} CUDA devices"
        )
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 autocast on CUDA, fp32 on the CPU."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise BSMamba2Error(f"unknown precision {precision!r} (use auto, fp32, bf16 or fp16)")
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """torch's autocast for a resolved ``precision`` on ``device`` (nothing for fp32)."""
    import torch

    dtype = _DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))
