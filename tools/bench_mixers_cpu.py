#!/usr/bin/env python
"""CPU cost of one bidirectional module of the paper model per mixer and axis, on the shapes of
8 s of stereo (62 bands × 801 frames): inference, the PyTorch path, 2 threads, the tuned
allocator as the command line runs.

Prints and writes (JSON) wall and process CPU seconds per (mixer, axis): on a shared machine
the CPU seconds compare mixers better than the wall time.

    python tools/bench_mixers_cpu.py --mixers mamba2,mamba --json cpu_mixers.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bsmamba2.allocator import tune_allocator
from bsmamba2.model import BSMamba2Config
from bsmamba2.model.blocks import BidirectionalMamba

AXES = {"band": (801, 62), "time": (62, 801)}  # (sequences, length) of an 8 s clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixers", default="mamba2,mamba")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    for mixer in args.mixers.split(","):
        block = BidirectionalMamba(BSMamba2Config(mixer=mixer)).eval()
        for axis, (seqs, length) in AXES.items():
            x = torch.randn(seqs, length, block.linear.out_channels)
            with torch.inference_mode():
                block(x[:2, :8])  # the code paths once, on a sliver
                wall, cpu = time.perf_counter(), time.process_time()
                block(x)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            results[f"{mixer} {axis}"] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
            print(f"{mixer:<7} {axis} axis ({seqs}×{length}): {wall:7.2f} s wall, {cpu:7.2f} s CPU",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
