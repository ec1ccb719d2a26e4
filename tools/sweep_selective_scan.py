#!/usr/bin/env python
"""Launch variants of the Triton selective scan on the paper's shapes (GPU): chunk length K
(the forward's state spacing), the backward's sub-chunk (its register ring), channels and
warps per backward program, a register cap.

Each variant's gradients are checked against the default variant's (relative error), then
fwd and fwd+bwd are timed (median GPU time of calls queued back to back, as
benchmark_mamba_ssm.py). Prints a table and writes JSON; the fastest variant is what
``_bwd_config`` / ``CHUNK`` should say.

    python tools/sweep_selective_scan.py --json sweep.json

``--forward 0,1,2`` times the inference forward instead (no gradients recorded, as in a
separation) for settings of ``ROUGH_16BIT``, each twice, in the order given and then
reversed (drift shows as a difference between the two); outputs are checked against the
first setting's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmark_mamba_ssm import SHAPES, Timer, selective_scan_inputs
from bsmamba2.ops.triton import selective

VARIANTS = {  # name: (K, backward launch settings); the first is the default, the others' reference
    "K4 s2": (4, dict(BLOCK_D=32, num_warps=1, SUB=2)),
    "K4 s4": (4, dict(BLOCK_D=32, num_warps=1, SUB=4)),
    "K2 s2": (2, dict(BLOCK_D=32, num_warps=1, SUB=2)),
    "K4 s2 r168": (4, dict(BLOCK_D=32, num_warps=1, SUB=2, maxnreg=168)),
    "K4 s4 d64 w2": (4, dict(BLOCK_D=64, num_warps=2, SUB=4)),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def forward_settings(spec: str, axes: list[str], timer: Timer) -> dict:
    """The inference forward for each ``ROUGH_16BIT`` of ``spec`` on each axis: median ms of
    its two timings (in order, then reversed) and the output's error against the first's."""
    results = {}
    settings = spec.split(",")
    for axis in axes:
        inputs, _ = selective_scan_inputs(*SHAPES["paper"][axis], 1024, 16, "cuda", torch.bfloat16, False)
        times, first = {s: [] for s in settings}, None
        for name in settings + settings[::-1]:
            selective.ROUGH_16BIT = int(name)

            def fwd(inputs=inputs):
                return selective.selective_scan(*inputs, delta_softplus=True)

            out = fwd()
            first = out if first is None else first
            times[name].append(timer(fwd))
            row = {"fwd_ms": [round(t, 3) for t in times[name]],
                   "out_rel_vs_first": float(f"{rel(out, first):.2e}"),
                   "fwd_config": str(selective._fwd.best_config)}
            results[f"{axis} {name}"] = row
            print(f"{axis:<5} {name:<8} fwd {times[name][-1]:8.3f} ms  "
                  f"out vs first {row['out_rel_vs_first']:.1e}  fwd: {row['fwd_config']}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--forward", default=None, help="ROUGH_16BIT settings of the forward, e.g. 0,2")
    parser.add_argument("--axes", default="time,band")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    shapes = SHAPES["paper"]
    d, n = 1024, 16
    timer = Timer(torch.device("cuda"), quick=False)
    if args.forward:
        results = forward_settings(args.forward, args.axes.split(","), timer)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return
    results, reference = {}, {}
    for axis in args.axes.split(","):
        inputs, leaves = selective_scan_inputs(*shapes[axis], d, n, "cuda", torch.bfloat16, True)
        with torch.no_grad():
            dy = torch.randn_like(selective.selective_scan(*inputs, delta_softplus=True))
        for name in args.variants.split(","):
            k, launch = VARIANTS[name]
            selective.CHUNK = k
            selective._bwd_config = lambda n, launch=launch: dict(launch)

            def fwd(inputs=inputs):
                return selective.selective_scan(*inputs, delta_softplus=True)

            def fwd_bwd(fwd=fwd, leaves=leaves, dy=dy):
                return torch.autograd.grad(fwd(), leaves, dy)

            got = fwd_bwd()
            if axis not in reference:
                reference[axis] = got
            errs = [rel(a, b) for a, b in zip(got, reference[axis], strict=True)]
            row = {"fwd_ms": round(timer(fwd), 3), "fwd_bwd_ms": round(timer(fwd_bwd), 3),
                   "max_rel_vs_first": float(f"{max(errs):.2e}"),
                   "fwd_config": str(selective._fwd.best_config)}
            results[f"{axis} {name}"] = row
            print(f"{axis:<5} {name:<20} fwd {row['fwd_ms']:8.3f} ms  fwd+bwd {row['fwd_bwd_ms']:8.3f} ms  "
                  f"grads vs first {row['max_rel_vs_first']:.1e}  fwd: {row['fwd_config']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
