"""``torch.compile`` of the Mamba-2 modules on the CPU: when it pays, and undoing it.

On the CPU the reference ops are bound by element-wise passes over large activations;
inductor fuses them into C++ loops (1.5–1.8× faster per segment, docs/benchmarks.md). The
compile itself takes ~2.5 minutes on 2 cores the first time (inductor caches it on disk), so
``--compile auto`` turns it on only for enough audio: with eager at ≈ 0.18× real time and
compiled at ≈ 0.31×, a cold compile is repaid after about a minute of audio;
:data:`AUTO_COMPILE_SECONDS` leaves margin.
"""

from __future__ import annotations

import os
import shutil

import torch

from bsmamba2.errors import BSMamba2Error
from bsmamba2.model.blocks import BidirectionalMamba

AUTO_COMPILE_SECONDS = 120.0
"""``--compile auto`` compiles when the inputs add up to at least this much audio."""


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use (``$CXX`` or g++), if it is on PATH."""
    name = os.environ.get("CXX") or "g++"
    return name if shutil.which(name) else None


def auto_compile(device: torch.device, seconds: float) -> bool:
    """``--compile auto``: on the CPU, with a C++ compiler, for enough audio."""
    return device.type == "cpu" and seconds >= AUTO_COMPILE_SECONDS and cpp_compiler() is not None


def compile_blocks(model: torch.nn.Module, device: torch.device, backend: str = "inductor") -> None:
    """``torch.compile`` every bidirectional Mamba-2 module of ``model`` in place.

    The modules share one compiled graph per input shape (time axis, band axis), built on
    the first segment. Parameters and state_dict keys stay as they are. CUDA runs our Triton
    kernels already, so there it is refused. ``backend`` is torch.compile's (tests use
    ``aot_eager``: the same tracing, no C++).
    """
    if device.type != "cpu":
        raise BSMamba2Error(f"compile: only for the CPU path (device {device}); CUDA uses the Triton kernels")
    if backend == "inductor" and cpp_compiler() is None:
        name = os.environ.get("CXX") or "g++"
        raise BSMamba2Error(f"compile: torch.compile needs a C++ compiler ({name!r} not found); "
                            "install one or run without compiling")
    for module in model.modules():
        if isinstance(module, BidirectionalMamba):
            module.compile(backend=backend)


def uncompile_blocks(model: torch.nn.Module) -> None:
    """Undo :func:`compile_blocks`: the modules run eagerly again (``nn.Module.compile`` keeps
    the compiled callable in ``_compiled_call_impl``; clearing it is how to drop it)."""
    for module in model.modules():
        if isinstance(module, BidirectionalMamba):
            module._compiled_call_impl = None
