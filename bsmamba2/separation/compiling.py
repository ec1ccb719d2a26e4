"""``torch.compile`` of the Mamba-2 modules on the CPU: when it pays, and undoing it.

On the CPU the reference ops are bound by element-wise passes over large activations;
inductor fuses them into C++ loops (faster per segment, docs/benchmarks.md). The compile
itself is slow the first time (:data:`COMPILE_SECONDS`; inductor caches it on disk, and even
a cached one takes a while to load), so ``compile="auto"`` times the first segments eagerly
and compiles for the rest only when the eager time it would save exceeds that: a whole song
with the paper model, not a short clip or a small model.

Inductor's cache lives in bsmamba2's cache folder (:func:`compile_cache_dir`), not in its
default under the temporary folder, so it survives reboots; after a compile has run for a
model, input shape and precision a marker there says so, and ``auto`` then weighs the much
smaller cost of loading the cached code (:data:`WARM_COMPILE_SECONDS`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from bsmamba2.errors import BSMamba2Error
from bsmamba2.model.blocks import BidirectionalMamba
from bsmamba2.model.mamba1 import Mamba

COMPILE_SECONDS = 60.0
"""What a cold compile of the paper model costs on a 2-core CPU, with a margin (measured on an
AVX-512 EPYC: ~43 s since the SSD's chunk loop is one op under compile, ~65 s before on the same
machine, ~125 s on an older 2-core VM before the modules ran in pieces; docs/benchmarks.md)."""
WARM_COMPILE_SECONDS = 15.0
"""What compiling costs when inductor's cache already holds the code (tracing and loading;
measured: ~7 s for the paper model)."""
COMPILED_SPEEDUP = 1.5
"""Eager time / compiled time, the low end of what was measured (1.5–1.8×)."""


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use (``$CXX`` or g++), if it is on PATH."""
    name = os.environ.get("CXX") or "g++"
    return name if shutil.which(name) else None


def compile_pays(eager_seconds: float, warm: bool = False) -> bool:
    """Would compiling save time on work that takes ``eager_seconds`` eagerly (and is it
    possible)? ``warm``: the cache holds this compile already (:func:`is_warm`)."""
    saved = eager_seconds * (1 - 1 / COMPILED_SPEEDUP)
    return saved > (WARM_COMPILE_SECONDS if warm else COMPILE_SECONDS) and cpp_compiler() is not None


def compile_cache_dir() -> Path:
    """Inductor's cache: ``$TORCHINDUCTOR_CACHE_DIR``, else ``inductor/`` in bsmamba2's cache
    folder (``$BSMAMBA2_CACHE``, default ``~/.cache/bsmamba2``)."""
    from bsmamba2.checkpoint.registry import cache_dir

    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or cache_dir() / "inductor")


def _marker(model: torch.nn.Module, shape: tuple[int, ...], precision: str) -> Path:
    """The file that says a compile ran for ``model``'s architecture on inputs of ``shape``
    (the model's spectrogram) in ``precision``, with this torch."""
    config = getattr(model, "config", None)
    arch = config.to_dict() if hasattr(config, "to_dict") else type(model).__name__
    what = {"torch": torch.__version__, "config": arch, "shape": list(shape), "precision": precision}
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]
    return compile_cache_dir() / "bsmamba2-compiled" / key


def is_warm(model: torch.nn.Module, shape: tuple[int, ...], precision: str) -> bool:
    """Whether a compile of ``model`` for this input shape and precision has run before
    (:func:`mark_warm`), so that inductor's cache holds its code."""
    return _marker(model, shape, precision).is_file()


def mark_warm(model: torch.nn.Module, shape: tuple[int, ...], precision: str) -> None:
    """Note that the compiled model ran on this input shape and precision (best effort: a
    read-only cache only means the next run assumes a cold compile)."""
    marker = _marker(model, shape, precision)
    with contextlib.suppress(OSError):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


def compile_blocks(model: torch.nn.Module, device: torch.device, backend: str = "inductor") -> None:
    """``torch.compile`` every bidirectional Mamba-2 module of ``model`` in place.

    Modules with Mamba-1 mixers stay eager (:func:`traces_well`); a model of them only is
    left as it is.

    The modules share one compiled graph per input shape (time axis, band axis), built on
    the first segment. Parameters and state_dict keys stay as they are. CUDA runs our Triton
    kernels already, so there it is refused. ``backend`` is torch.compile's (tests use
    ``aot_eager``: the same tracing, no C++). Inductor's cache goes to :func:`compile_cache_dir`.
    """
    if device.type != "cpu":
        raise BSMamba2Error(f"compile: only for the CPU path (device {device}); CUDA uses the Triton kernels")
    if backend == "inductor" and cpp_compiler() is None:
        name = os.environ.get("CXX") or "g++"
        raise BSMamba2Error(f"compile: torch.compile needs a C++ compiler ({name!r} not found); "
                            "install one or run without compiling")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir())  # read at the first compile
    with quiet_compiler():
        for module in model.modules():
            if isinstance(module, BidirectionalMamba) and traces_well(module):
                module.compile(backend=backend)


def traces_well(module: BidirectionalMamba) -> bool:
    """False for Mamba-1 mixers. With the PyTorch scan, a Python loop over tiles of a few steps,
    tracing would unroll it into thousands of ops per call (a traced 200-step module of a small
    Mamba-1 model: 23 s to compile, then 17x slower than eager). Our C scan traces as one op,
    but the paper's Mamba-1 module compiled ran no faster than eager (docs/benchmarks.md):
    compiling it would cost the compile for nothing."""
    return not isinstance(module.forward_blocks[0].mixer, Mamba)


@contextlib.contextmanager
def quiet_compiler() -> Iterator[None]:
    """Compiling, and calls into compiled modules, without torch's own noise: inductor imports
    ``torch.utils.mkldnn``, whose 14 ``torch.jit.script_method`` decorators each warn that
    torch.jit is deprecated; that says nothing about this run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.script_method` is deprecated", DeprecationWarning)
        yield


def uncompile_blocks(model: torch.nn.Module) -> None:
    """Undo :func:`compile_blocks`: the modules run eagerly again (``nn.Module.compile`` keeps
    the compiled callable in ``_compiled_call_impl``; clearing it is how to drop it)."""
    for module in model.modules():
        if isinstance(module, BidirectionalMamba):
            module._compiled_call_impl = None
