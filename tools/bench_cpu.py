#!/usr/bin/env python
"""The paper model's forward on the CPU, variants A/B interleaved in one process: CPU time.

Each variant is ``precision:pieces`` — ``fp32`` or ``bf16`` (autocast), and ``pieces``
(the bidirectional modules a few sequences at a time, :func:`bsmamba2.model.bsmamba2.in_pieces`,
the default), a number (pieces of that many tokens) or ``whole`` (all sequences in one call,
as before). The variants run in turn,
round after round, on one random 8 s stereo segment (random weights: the cost does not depend
on them), and each reports the least user + system CPU time of this process over the rounds
(on a shared machine the work done, where wall time also counts others' jobs) and its wall
time. ``--peak`` runs each variant once more in a fresh process for its peak RSS.

Example: ``python tools/bench_cpu.py --variants fp32:whole,bf16:whole,bf16:pieces --rounds 2
--threads 1 --peak --json bench_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch

import bsmamba2
from bsmamba2.allocator import tune_allocator
from bsmamba2.model import BSMamba2, BSMamba2Config, stft
from bsmamba2.model import bsmamba2 as network

DEFAULT_PIECES = network.PIECE_TOKENS


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def run_variant(model: BSMamba2, spec: torch.Tensor, variant: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one forward pass in ``variant``."""
    precision, pieces = variant.split(":")
    network.PIECE_TOKENS = {"pieces": DEFAULT_PIECES, "whole": 2**62}.get(pieces) or int(pieces)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with torch.inference_mode(), ctx:
        start, cpu = time.perf_counter(), cpu_seconds()
        model(spec)
        return cpu_seconds() - cpu, time.perf_counter() - start


def setup(args: argparse.Namespace) -> tuple[BSMamba2, torch.Tensor]:
    tune_allocator()  # as the command line does
    torch.set_num_threads(args.threads)
    cfg = BSMamba2Config.from_yaml(args.config)
    torch.manual_seed(0)
    model = BSMamba2(cfg).eval()
    spec = stft(torch.randn(cfg.channels, int(args.seconds * cfg.sample_rate)) * 0.1, cfg)[None]
    return model, spec


def peak_of(args: argparse.Namespace, variant: str) -> dict[str, float]:
    """The peak RSS of one pass of ``variant`` in a fresh process."""
    cmd = [sys.executable, __file__, "--config", args.config, "--seconds", str(args.seconds),
           "--threads", str(args.threads), "--child", variant]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bsmamba2.yaml")
    parser.add_argument("--seconds", type=float, default=8.0, help="segment length")
    parser.add_argument("--variants", default="fp32:whole,bf16:whole,bf16:pieces")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--peak", action="store_true", help="each variant's peak RSS too, in a fresh process")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one pass for the peak RSS
        model, spec = setup(args)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        run_variant(model, spec, args.child)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"baseline_rss_mib": before, "peak_rss_mib": peak}))
        return
    variants = args.variants.split(",")
    # First, while this process is small: a child's peak RSS starts at its parent's (fork).
    peaks = {v: peak_of(args, v) for v in variants} if args.peak else {v: {} for v in variants}
    model, spec = setup(args)
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for round_ in range(args.rounds + 1):
        for v in variants:
            measured = run_variant(model, spec, v)
            if round_:  # the first round warms up
                times[v].append(measured)
            print(f"round {round_} {v}: CPU {measured[0]:.1f} s, wall {measured[1]:.1f} s", flush=True)
    rows = []
    for v in variants:
        row = {"variant": v, "cpu_s": min(c for c, _ in times[v]), "wall_s": min(w for _, w in times[v]),
               "cpu_times": [c for c, _ in times[v]], "wall_times": [w for _, w in times[v]], **peaks[v]}
        rows.append(row)
    print(f"{args.seconds:g} s segment, {args.config}, {args.threads} threads")
    print(f"{'variant':<14} {'CPU s':>7} {'wall s':>7} {'peak MiB':>9}")
    for r in rows:
        peak = r.get("peak_rss_mib", float("nan"))
        print(f"{r['variant']:<14} {r['cpu_s']:>7.1f} {r['wall_s']:>7.1f} {peak:>9.0f}")
    if args.json:
        meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                "bsmamba2": bsmamba2.__version__, "torch": torch.__version__,
                "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                "threads": args.threads, "load_average_end": os.getloadavg()}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
