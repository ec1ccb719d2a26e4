#!/usr/bin/env python
"""Time the SSD scan's forward+backward of several versions of ``bsmamba2/ops/triton/ssd.py``
in one process on a GPU: the way to A/B a kernel change within one short GPU lease.

Each version is a file (e.g. ``git show main:bsmamba2/ops/triton/ssd.py > /tmp/ssd_main.py``,
made before the lease: the GPU machine gets no ``.git``). For both axes of the paper model
(bf16) it prints the median fwd and fwd+bwd times, the first call (compile + autotune), the
CUDA time of every kernel of one fwd+bwd, the autotune winners, and the largest gradient
difference from the first version (relative to its largest value). ``--pass-axis`` adds the
time axis of the one-pass 60 s separation (62 sequences × 6001 steps: few, long sequences);
``--each-config`` times the forward with every autotune candidate of ``_chunked_fwd`` and
``_short_fwd`` forced in turn (what the autotuner weighed; it prints only its winner).

    python tools/ab_ssd.py /tmp/ssd_main.py bsmamba2/ops/triton/ssd.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmark_mamba_ssm import SHAPES, Timer, ssd_inputs
from bsmamba2.ops.triton import common
from bsmamba2.ops.triton.tuned import kernel_name

KERNELS = ("_chunked_fwd", "_state_grads", "_chunk_bwd", "_short_fwd")
PASS_AXIS = (62, 6001)
"""(sequences, steps) of a time-axis call of the 60 s one-pass separation."""


def load(path: Path, index: int) -> ModuleType:
    """The file as a module of its own (its kernels compile and autotune independently)."""
    spec = importlib.util.spec_from_file_location(f"ssd_version_{index}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(module: ModuleType, seqs: int, length: int, timer: Timer) -> tuple[dict, list[torch.Tensor]]:
    """Times, per-kernel CUDA times and the gradients of one version on one shape."""
    torch.manual_seed(0)
    cfg = SHAPES["paper"]["cfg"]
    args, kw = ssd_inputs(seqs, length, cfg, torch.device("cuda"), torch.bfloat16, True)
    leaves = [*args, kw["dt_bias"]]
    dy = torch.randn(seqs, length, cfg.nheads, cfg.headdim, device="cuda", dtype=torch.bfloat16)

    def step() -> tuple[torch.Tensor, ...]:
        y = module.ssd_scan(*args, **kw)
        return (y, *torch.autograd.grad(y, leaves, dy))

    start = time.perf_counter()
    outputs = step()
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    fwd = timer(lambda: module.ssd_scan(*args, **kw))
    both = timer(step)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = [(e.name.split("(")[0][:24], e.device_time_total / 1e3)
               for e in prof.events() if e.device_time_total > 0]
    return dict(fwd=fwd, both=both, first=first, kernels=kernels), [o.float() for o in outputs]


def config_times(module: ModuleType, seqs: int, length: int, timer: Timer) -> list[str]:
    """The forward's median time with each candidate of its kernel forced (the tuned table and
    the autotuner bypassed), as ``config: ms`` strings."""
    torch.manual_seed(0)
    cfg = SHAPES["paper"]["cfg"]
    args, kw = ssd_inputs(seqs, length, cfg, torch.device("cuda"), torch.bfloat16, False)
    name = "_short_fwd" if length <= module.CHUNK else "_chunked_fwd"
    lines = []
    for config in getattr(module, name).configs:
        meta = {**config.kwargs, **({"maxnreg": config.maxnreg} if config.maxnreg else {})}

        def forced(kernel, _args, _kwargs, config=config, meta=meta):
            return (config.num_warps, config.num_stages, meta) if kernel_name(kernel) == name else None

        with mock.patch.object(common, "known_config", forced):
            lines.append(f"{config}: {timer(lambda: module.ssd_scan(*args, **kw)):.3f} ms")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", type=Path, help="ssd.py files; the first is the baseline")
    parser.add_argument("--pass-axis", action="store_true",
                        help=f"also {PASS_AXIS[0]} × {PASS_AXIS[1]} steps")
    parser.add_argument("--each-config", action="store_true", help="the forward with each candidate forced")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    timer = Timer(torch.device("cuda"), quick=False)
    modules = [load(path, i) for i, path in enumerate(args.versions)]
    axes = {axis: SHAPES["paper"][axis] for axis in ("time", "band")}
    if args.pass_axis:
        axes["pass"] = PASS_AXIS
    for axis, (seqs, length) in axes.items():
        baseline = None
        for path, module in zip(args.versions, modules, strict=True):
            result, grads = measure(module, seqs, length, timer)
            baseline = baseline or grads
            diff = max(((g - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                       for g, b in zip(grads, baseline, strict=True))
            print(f"{axis} ({seqs}×{length}) {path}: fwd {result['fwd']:.3f} ms, fwd+bwd "
                  f"{result['both']:.3f} ms, first call {result['first']:.1f} s, max diff {diff:.1e}")
            print("   kernels (ms): " + ", ".join(f"{n} {t:.2f}" for n, t in result["kernels"]))
            winners = {name: [str(c) for c in getattr(module, name).cache.values()]
                       for name in KERNELS if hasattr(module, name)}
            print(f"   autotune winners: {winners}", flush=True)
            if args.each_config:
                print("   forward per candidate: " + "; ".join(config_times(module, seqs, length, timer)),
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
