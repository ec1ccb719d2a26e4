"""Known-best launch configurations of our autotuned Triton kernels, per GPU model.

Autotuning compiles and times every candidate of a kernel at its first call: most of the
cold start of a separation. For a GPU listed in :data:`KNOWN_BEST` a kernel called with a
listed key (its autotune key and its first tensor's dtype) is compiled once, with the
configuration the autotuner picked on that GPU model; any other GPU or key autotunes as
before, and ``BSMAMBA2_AUTOTUNE=1`` autotunes always (new kernels, a new Triton, a check).
``tools/tune_kernels.py`` measures the table (by autotuning the workloads of the package)
and prints it for this file. A configuration changes the speed of a kernel, never what
it computes beyond rounding.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Mapping
from typing import Any

import torch

Config = tuple[int, int, dict[str, Any]]
"""(num_warps, num_stages, meta-parameters)."""

KNOWN_BEST: dict[str, dict[str, dict[str, Config]]] = {
    # tools/tune_kernels.py, triton 3.6.0, torch 2.11.0+cu130, bf16, 2026-12-01
    "NVIDIA H200": {
        "_chunk_bwd": {
            "HG=16,P=64,N=128,BLOCK_Q=64,HAS_STATES=False,PART=0,HEADS=16|torch.bfloat16": (4, 3, {}),
            "HG=16,P=64,N=128,BLOCK_Q=64,HAS_STATES=False,PART=1,HEADS=16|torch.bfloat16": (2, 2, {}),
            "HG=16,P=64,N=128,BLOCK_Q=64,HAS_STATES=False,PART=2,HEADS=16|torch.bfloat16": (2, 2, {}),
            "HG=16,P=64,N=128,BLOCK_Q=64,HAS_STATES=True,PART=0,HEADS=1|torch.bfloat16": (4, 1, {}),
            "HG=16,P=64,N=128,BLOCK_Q=64,HAS_STATES=True,PART=1,HEADS=16|torch.bfloat16": (4, 3, {}),
            "HG=16,P=64,N=128,BLOCK_Q=64,HAS_STATES=True,PART=2,HEADS=16|torch.bfloat16": (4, 3, {}),
        },
        "_chunked_fwd": {  # autotuned by tools/ab_ssd.py, 2026-12-03 (the loads one chunk ahead)
            "H=16,P=64,N=128,COMPUTE_Y=False,BLOCK_Q=64|torch.bfloat16": (4, 1, {}),
            "H=16,P=64,N=128,COMPUTE_Y=True,BLOCK_Q=32|torch.bfloat16": (4, 1, {}),
        },
        "_conv_bwd": {
            "Dc=1280,W=4,L_BUCKET=1024,HAS_BIAS=True,SILU=True|torch.bfloat16":
                (1, 1, {"BLOCK_C": 2, "BLOCK_D": 256, "PREFETCH": 1}),
            "Dc=1280,W=4,L_BUCKET=64,HAS_BIAS=True,SILU=True|torch.bfloat16":
                (1, 1, {"BLOCK_C": 2, "BLOCK_D": 256, "PREFETCH": 1}),
        },
        "_conv_fwd": {
            "Dc=1280,W=4,L_BUCKET=1024,HAS_BIAS=True,SILU=True|torch.bfloat16":
                (4, 1, {"BLOCK_L": 16, "BLOCK_D": 256, "TILES": 2}),
            "Dc=1280,W=4,L_BUCKET=64,HAS_BIAS=True,SILU=True|torch.bfloat16":
                (4, 1, {"BLOCK_L": 16, "BLOCK_D": 256, "TILES": 2}),
            "Dc=1280,W=4,L_BUCKET=8192,HAS_BIAS=True,SILU=True|torch.bfloat16":
                (4, 1, {"BLOCK_L": 16, "BLOCK_D": 256, "TILES": 2}),
        },
        "_norm_bwd": {
            "GS=1024,HAS_Z=True,Dm=1024|torch.bfloat16": (2, 1, {"ELEMS": 512}),
            "GS=256,HAS_Z=False,Dm=256|torch.bfloat16": (4, 1, {"ELEMS": 2048}),
        },
        "_norm_fwd": {
            "GS=1024,HAS_Z=True,Dm=1024|torch.bfloat16": (4, 1, {"ELEMS": 2048}),
            "GS=256,HAS_Z=False,Dm=256|torch.bfloat16": (4, 1, {"ELEMS": 2048}),
        },
        "_short_fwd": {
            "BLOCK_Q=64,HG=16,P=64,N=128|torch.bfloat16": (2, 2, {}),
        },
        "_state_grads": {
            "H=16,P=64,N=128|torch.bfloat16": (8, 2, {}),
        },
    },
}
"""GPU name (``torch.cuda.get_device_name``) → kernel → key → configuration."""


def autotune_forced() -> bool:
    """Whether ``BSMAMBA2_AUTOTUNE=1`` asks to autotune every kernel at its first call."""
    return os.environ.get("BSMAMBA2_AUTOTUNE", "0") == "1"


@functools.cache
def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def kernel_name(kernel: Any) -> str:
    """The name of the Python function under an autotuned (or heuristics-wrapped) kernel."""
    fn = kernel
    while not inspect.isfunction(fn):
        fn = fn.fn
    return fn.__name__


def call_key(kernel: Any, args: tuple, kwargs: Mapping[str, Any]) -> str:
    """A call's autotune key as the table spells it: ``NAME=value,...|dtype``."""
    named = {**dict(zip(kernel.arg_names, args, strict=False)), **kwargs}
    dtype = next((v.dtype for v in named.values() if isinstance(v, torch.Tensor)), None)
    return ",".join(f"{k}={named[k]}" for k in kernel.keys if k in named) + f"|{dtype}"


def lookup(device: str, kernel: str, key: str) -> Config | None:
    """The configuration listed for ``kernel`` called with ``key`` on GPU model ``device``."""
    return KNOWN_BEST.get(device, {}).get(kernel, {}).get(key)


def known_config(kernel: Any, args: tuple, kwargs: Mapping[str, Any]) -> Config | None:
    """The listed configuration for this call of the autotuned ``kernel`` (None: autotune)."""
    if autotune_forced():
        return None
    tensor = next((v for v in args if isinstance(v, torch.Tensor)), None)
    if tensor is None or tensor.device.type != "cuda":
        return None
    return lookup(_device_name(tensor.device.index or 0), kernel_name(kernel), call_key(kernel, args, kwargs))
