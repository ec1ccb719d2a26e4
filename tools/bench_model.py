#!/usr/bin/env python
"""Forward time of BSMamba2 on one clip: seconds and × real time, per precision.

Example (the issue-2 measurement): ``python tools/bench_model.py --seconds 8 --json bench_model.json``
Prints a table and writes JSON. Random weights and audio: the cost does not depend on them.
``--compile`` times the torch.compile'd modules; their first pass (compile included) is
reported apart (set TORCHINDUCTOR_CACHE_DIR to an empty folder to time a cold compile).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch

import bsmamba2
from bsmamba2.allocator import tune_allocator
from bsmamba2.model import BSMamba2, BSMamba2Config, stft
from bsmamba2.separation.compiling import compile_blocks


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (inductor's compile
    workers): on a shared machine the work done, where wall time also counts others' jobs."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_forward(
    model: BSMamba2, spec: torch.Tensor, precision: str, repeats: int
) -> tuple[list[float], list[float]]:
    """Wall and CPU times of the warm-up forward pass, then of ``repeats`` more."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    ctx = torch.autocast(spec.device.type, dtype=dtype) if dtype else nullcontext()
    walls, cpus = [], []
    with torch.inference_mode(), ctx:
        for _ in range(repeats + 1):
            if spec.is_cuda:
                torch.cuda.synchronize()
            start, cpu = time.perf_counter(), cpu_seconds()
            model(spec)
            if spec.is_cuda:
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - start)
            cpus.append(cpu_seconds() - cpu)
    return walls, cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bsmamba2.yaml", help="model config (YAML)")
    parser.add_argument("--seconds", type=float, default=8.0, help="clip length")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32,bf16,fp16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the Mamba-2 modules first (as `separate --compile`); the "
                        "first pass, compile included, is reported apart")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc malloc as it is (the CLI tunes it, see bsmamba2/allocator.py)")
    args = parser.parse_args()
    tuned = False if args.default_malloc else tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = BSMamba2Config.from_yaml(args.config)
    torch.manual_seed(0)
    model = BSMamba2(cfg).eval().to(args.device)
    if args.compile:
        compile_blocks(model, torch.device(args.device))
    audio = torch.randn(cfg.channels, int(args.seconds * cfg.sample_rate), device=args.device) * 0.1
    spec = stft(audio, cfg)[None]
    rows = []
    for precision in args.precisions.split(","):
        (first, *times), (first_cpu, *cpu_times) = time_forward(model, spec, precision, args.repeats)
        best = min(times)
        rows.append({"precision": precision, "seconds": best, "x_real_time": args.seconds / best,
                     "times": times, "first_seconds": first, "cpu_seconds": min(cpu_times),
                     "cpu_times": cpu_times, "first_cpu_seconds": first_cpu})
    print(f"BSMamba2 forward, {args.config}, {args.seconds:g} s stereo clip, device {args.device}, "
          f"{torch.get_num_threads()} threads, allocator tuned: {tuned}, compiled: {args.compile}")
    print(f"{'precision':<10} {'seconds':>9} {'x real time':>12} {'time / audio':>13} {'first pass s':>13} "
          f"{'CPU s':>8} {'first CPU s':>12}")
    for r in rows:
        print(f"{r['precision']:<10} {r['seconds']:>9.2f} {r['x_real_time']:>12.3f} "
              f"{r['seconds'] / args.seconds:>12.2f}x {r['first_seconds']:>13.1f} "
              f"{r['cpu_seconds']:>8.1f} {r['first_cpu_seconds']:>12.1f}")
    if args.json:
        meta = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "bsmamba2": bsmamba2.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "config": args.config, "seconds_audio": args.seconds,
            "device": args.device, "allocator_tuned": tuned, "compiled": args.compile,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "load_average": os.getloadavg(),
        }
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
