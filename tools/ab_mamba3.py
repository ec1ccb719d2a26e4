#!/usr/bin/env python
"""Time the Mamba-3 scan's forward and forward+backward of several versions of
``bsmamba2/ops/triton/mamba3.py`` in one process, beside our SSD scan on the same shapes: the
way to A/B a Mamba-3 kernel change within one short GPU lease (as :mod:`tools.ab_ssd` for SSD).

Each version is a file (e.g. ``git show main:bsmamba2/ops/triton/mamba3.py > /tmp/m3_main.py``,
made before the lease: the GPU machine gets no ``.git``). For both axes of the paper model
(bf16), each rank and each chunk size asked for, it prints the mean fwd and fwd+bwd times, the
first calls (compile + autotune), the median fwd and fwd+bwd times, the CUDA time of every
kernel of one fwd+bwd, and the largest difference of the outputs and gradients from the first
version's (relative to its largest value); ``--json`` writes the same. ``--shapes small`` on a
CPU under ``TRITON_INTERPRET=1`` with ``--seqs 2`` checks the script itself.

    python tools/ab_mamba3.py /tmp/m3_main.py bsmamba2/ops/triton/mamba3.py --chunks 0,32 --json ab.json

The version ``official`` is mamba_ssm's ``mamba3_siso_combined`` (SISO only; mamba_ssm from source,
run through ``with_peer.py``), behind our op's signature as ``benchmark_mamba_ssm.py`` adapts it.
Its autotuner tries 27–81 configurations per kernel; ``--official-warps 4,8`` keeps only those with
these warp counts, 2 stages and no register cap, so that its first call fits a short lease
(processes with one warp count each, run at once, compile the configurations in parallel into
Triton's disk cache; a later process then only times them):

    MAMBA_SSM_SRC=.peer/src/mamba_ssm python .peer/with_peer.py tools/ab_mamba3.py \
        bsmamba2/ops/triton/mamba3.py official --ranks 1 --official-warps 4,8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmark_mamba_ssm import SHAPES, Timer, mamba3_inputs, ssd_inputs
from bsmamba2 import ops
from tools.ab_ssd import load

OFFICIAL = "official"
"""The version name that stands for mamba_ssm's own Triton kernels."""


def official(warps: list[int] | None):
    """mamba_ssm's ``mamba3_siso_combined`` with our op's signature (``mamba3_scan``); with
    ``warps``, every autotuned kernel of its Mamba-3 modules keeps only the configurations of those
    warp counts, 2 stages and no register cap (where it has any)."""
    from benchmark_mamba_ssm import external_impl

    impl = external_impl("mamba_ssm")
    if impl is None or not hasattr(impl, "mamba3_scan"):
        raise SystemExit("mamba_ssm's Mamba-3 kernels are not importable (run through with_peer.py)")
    if warps:
        from triton.runtime.autotuner import Autotuner

        for name in ("angle_dt", "mamba3_siso_fwd", "mamba3_siso_bwd"):
            module = sys.modules[f"mamba_ssm.ops.triton.mamba3.{name}"]
            for tuner in (v for v in vars(module).values() if isinstance(v, Autotuner)):
                kept = [c for c in tuner.configs
                        if c.num_warps in warps and c.num_stages == 2 and getattr(c, "maxnreg", None) is None]
                tuner.configs = kept or tuner.configs
    return impl


def timed_step(step, device: torch.device, timer: Timer) -> dict:
    """First call (seconds), then the timer's median milliseconds and, on a GPU, every kernel's CUDA
    time (ms) of one more call."""
    start = time.perf_counter()
    outputs = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    result = dict(first_s=time.perf_counter() - start, ms=timer(step), kernels=[], outputs=outputs)
    if device.type == "cuda":
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        result["kernels"] = [(e.name.split("(")[0][:28], round(e.device_time_total / 1e3, 3))
                             for e in prof.events() if e.device_time_total > 0]
    return result


def mamba3_step(module: ModuleType, seqs: int, length: int, cfg, rank: int, chunk: int | None,
                device: torch.device, dtype: torch.dtype, backward: bool):
    """One call of the version's scan on fresh seeded inputs (and its gradients to every input)."""
    torch.manual_seed(0)
    args, kw = mamba3_inputs(seqs, length, cfg, rank, device, dtype, backward, chunk)
    leaves = [t for t in (*args, *kw.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
    dy = torch.randn_like(module.mamba3_scan(*args, **kw).detach()) if backward else None

    def step() -> tuple[torch.Tensor, ...]:
        y = module.mamba3_scan(*args, **kw)
        return (y, *torch.autograd.grad(y, leaves, dy)) if backward else (y,)

    return step


def ssd_step(seqs: int, length: int, cfg, device: torch.device, dtype: torch.dtype):
    """Our SSD scan's fwd+bwd on the same shape: the reference row of the issue's ratios."""
    args, kw = ssd_inputs(seqs, length, cfg, device, dtype, True)
    leaves = [*args, kw["dt_bias"]]
    dy = torch.randn(seqs, length, cfg.nheads, cfg.headdim, device=device, dtype=dtype)

    def step():
        with ops.use_backend("triton"):
            y = ops.ssd_scan(*args, **kw)
        return torch.autograd.grad(y, leaves, dy)

    return step


def compare(paths: list[Path], modules: list[ModuleType], case: dict, seqs: int, length: int, cfg,
            device: torch.device, dtype: torch.dtype, timer: Timer, ssd_ms: float) -> list[dict]:
    """Every version on one (axis, rank, chunk) case: a row each, printed as it comes."""
    rows, baseline = [], None
    for path, module in zip(paths, modules, strict=True):
        if str(path) == OFFICIAL and case["rank"] > 1:
            continue  # the official MIMO scan is a TileLang kernel
        fwd, both = (timed_step(mamba3_step(module, seqs, length, cfg, case["rank"], case["chunk"], device,
                                            dtype, backward), device, timer) for backward in (False, True))
        grads = [o.float() for o in both["outputs"]]
        baseline = baseline or grads
        diffs = [round(((g - b).abs().max() / b.abs().max().clamp_min(1e-30)).item(), 6)
                 for g, b in zip(grads, baseline, strict=True)]  # the output, then each gradient
        diff = max(diffs)
        row = dict(**case, version=str(path), fwd_ms=fwd["ms"], fwd_bwd_ms=both["ms"],
                   vs_ssd=both["ms"] / ssd_ms, first_s=fwd["first_s"] + both["first_s"], max_diff=diff,
                   diffs=diffs, kernels=both["kernels"])
        rows.append(row)
        print(f"{case['axis']} r{case['rank']} chunk {case['chunk'] or 'default'} {path}: "
              f"fwd {fwd['ms']:.3f} ms, fwd+bwd {both['ms']:.3f} ms ({row['vs_ssd']:.2f}× SSD), "
              f"first calls {row['first_s']:.1f} s, max diff {diff:.1e} (out, grads: {diffs})", flush=True)
        if both["kernels"]:
            print("   kernels (ms): " + ", ".join(f"{n} {t:.2f}" for n, t in both["kernels"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", type=Path,
                        help=f"mamba3.py files or {OFFICIAL!r} (mamba_ssm's); the first is the baseline")
    parser.add_argument("--ranks", default="1,4", help="comma list of MIMO ranks (1: SISO)")
    parser.add_argument("--chunks", default="0", help="comma list of chunk sizes in steps (0: the default)")
    parser.add_argument("--axes", default="time,band")
    parser.add_argument("--shapes", choices=("paper", "small"), default="paper")
    parser.add_argument("--seqs", type=int, default=None, help="sequences per call (default: the shapes')")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument("--official-warps", default=None,
                        help="comma list: the official kernels' autotuning kept to these warp counts")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and args.shapes == "paper":
        parser.error("the paper shapes need a CUDA GPU (--shapes small checks the script on a CPU)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    timer = Timer(device, quick=device.type == "cpu")
    warps = [int(w) for w in args.official_warps.split(",")] if args.official_warps else None
    modules = [official(warps) if str(path) == OFFICIAL else load(path, i)
               for i, path in enumerate(args.versions)]
    rows = []
    cfg = SHAPES[args.shapes]["cfg"]
    for axis in args.axes.split(","):
        seqs, length = SHAPES[args.shapes][axis]
        seqs = args.seqs or seqs
        ssd = timed_step(ssd_step(seqs, length, cfg, device, dtype), device, timer)
        rows.append(dict(axis=axis, version="ssd", fwd_bwd_ms=ssd["ms"]))
        print(f"{axis} ({seqs}×{length}) our SSD: fwd+bwd {ssd['ms']:.3f} ms", flush=True)
        for rank in (int(r) for r in args.ranks.split(",")):
            for chunk in (int(c) or None for c in args.chunks.split(",")):
                case = dict(axis=axis, rank=rank, chunk=chunk)
                rows += compare(args.versions, modules, case, seqs, length, cfg, device, dtype, timer,
                                ssd["ms"])
    if args.json:
        args.json.write_text(json.dumps(dict(device=torch.cuda.get_device_name() if device.type == "cuda"
                                             else "cpu", torch=torch.__version__, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
