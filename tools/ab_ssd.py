#!/usr/bin/env python
"""Time the SSD scan's forward+backward of several versions of ``bsmamba2/ops/triton/ssd.py``
in one process on a GPU: the way to A/B a kernel change within one short GPU lease.

Each version is a file (e.g. ``git show main:bsmamba2/ops/triton/ssd.py > /tmp/ssd_main.py``,
made before the lease: the GPU machine gets no ``.git``). For both axes of the paper model
(bf16) it prints the median fwd and fwd+bwd times, the first call (compile + autotune), the
CUDA time of every kernel of one fwd+bwd, the autotune winners, and the largest gradient
difference from the first version (relative to its largest value).

    python tools/ab_ssd.py /tmp/ssd_main.py bsmamba2/ops/triton/ssd.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmark_mamba_ssm import SHAPES, Timer, ssd_inputs

KERNELS = ("_chunked_fwd", "_state_grads", "_chunk_bwd", "_short_fwd")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", type=Path, help="ssd.py files; the first is the baseline")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    timer = Timer(torch.device("cuda"), quick=False)
    modules = [load(path, i) for i, path in enumerate(args.versions)]
    for axis in ("time", "band"):
        seqs, length = SHAPES["paper"][axis]
        baseline = None
        for path, module in zip(args.versions, modules, strict=True):
            result, grads = measure(module, seqs, length, timer)
            baseline = baseline or grads
            diff = max(((g - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                       for g, b in zip(grads, baseline, strict=True))
            print(f"{axis} ({seqs}×{length}) {path}: fwd {result['fwd']:.3f} ms, fwd+bwd "
                  f"{result['both']:.3f} ms, first call {result['first']:.1f} s, max diff {diff:.1e}")
            print("   kernels (ms): " + ", ".join(f"{n} {t:.2f}" for n, t in result["kernels"]))
            winners = {name: [f"{c.num_warps}w{c.num_stages}s" for c in getattr(module, name).cache.values()]
                       for name in KERNELS if hasattr(module, name)}
            print(f"   autotune winners: {winners}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
