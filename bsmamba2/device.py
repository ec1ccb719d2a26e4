"""Where and in what precision a model runs (``--device``, ``--precision``), one rule for
separation and evaluation.

torch is imported inside the functions: the command line offers these choices (and reports
bad inputs) without loading it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import TYPE_CHECKING

from bsmamba2.errors import BSMamba2Error

if TYPE_CHECKING:
    import torch

DEVICES = "auto (CUDA, else Apple's MPS, else the CPU), cpu, cuda, cuda:N or mps"
PRECISIONS = ("fp32", "bf16", "fp16")
"""Autocast precisions; ``auto`` is bf16 on CUDA and on CPUs with bf16 instructions, else fp32."""
CPU_BF16_VARIABLE = "BSMAMBA2_CPU_BF16"
"""``1`` or ``0``: take the CPU as one with (without) fast bf16, whatever it reports."""
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


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX), or
    ``$BSMAMBA2_CPU_BF16`` says so (``1``/``0``).

    There the model's matrix products run several times faster in bf16 than in fp32
    (docs/benchmarks.md) and the official golden model's output stays within 1e-2 (relative)
    of fp32 (tests/model/test_bsmamba2.py); elsewhere bf16 is converted in software, slower.
    """
    forced = os.environ.get(CPU_BF16_VARIABLE, "")
    if forced not in ("", "0", "1"):
        raise BSMamba2Error(f"{CPU_BF16_VARIABLE}={forced!r}: expected 1, 0 or nothing")
    return forced == "1" if forced else _detected_cpu_bf16()


@functools.cache
def _detected_cpu_bf16() -> bool:
    """What the CPU reports (torch's own probe; older torch versions have only private ones)."""
    import torch

    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        found = capabilities()
        return bool(found.get("avx512_bf16") or found.get("amx_bf16"))
    names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    probes = [getattr(torch.cpu, name, None) for name in names]
    return any(probe() for probe in probes if probe is not None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 autocast on CUDA and on a CPU with bf16 instructions
    (:func:`cpu_has_fast_bf16`), fp32 elsewhere (other CPUs, MPS)."""
    if precision == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()):
            return "bf16"
        return "fp32"
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


def current_gpu(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` the current CUDA device for a block (nothing elsewhere): Triton launches
    its kernels on the current device, which is cuda:0 in every thread until set, whatever
    device the tensors are on (a worker of ``--devices 0,1`` runs on cuda:1)."""
    import torch

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
