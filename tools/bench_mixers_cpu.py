#!/usr/bin/env python
"""CPU cost per mixer on the shapes of 8 s of stereo (62 bands × 801 frames): inference, the
PyTorch path, the tuned allocator as the command line runs.

``--level module``: one bidirectional module of the paper model per mixer and axis.
``--level model``: the whole paper-size model (``BSMamba2Config(mixer=...)``) on one 8 s
stereo spectrogram, per precision (bf16 = CPU autocast).

The mixers run in turn, round after round, in one process; each run reports the process's
CPU seconds (user + system) and wall seconds, and — on Linux — how many cores other
processes kept busy meanwhile (``others_cores``, from /proc/stat): on a shared machine the
CPU seconds compare the mixers, and a run with others ≈ 0 is a quiet one. Prints a table and
writes JSON (every run, and per variant the least CPU and wall seconds over the rounds).

    python tools/bench_mixers_cpu.py --level model --mixers mamba2,mamba --rounds 2 --json cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch

import bsmamba2
from bsmamba2.allocator import tune_allocator
from bsmamba2.model import BSMamba2, BSMamba2Config, stft
from bsmamba2.model.blocks import BidirectionalMamba

AXES = {"band": (801, 62), "time": (62, 801)}  # (sequences, length) of an 8 s clip
SECONDS = 8.0


def busy_seconds() -> float | None:
    """CPU seconds all processes have spent (user, nice, system) since boot; None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:4]
        return sum(map(int, fields)) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def measure(fn: Callable[[], object]) -> dict[str, float | None]:
    """CPU and wall seconds of ``fn()``, and the cores other processes kept busy meanwhile."""
    busy, cpu, wall = busy_seconds(), time.process_time(), time.perf_counter()
    fn()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    after = busy_seconds()
    others = None if busy is None or after is None else max(0.0, after - busy - cpu) / wall
    return {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
            "others_cores": None if others is None else round(others, 2)}


Variants = dict[str, tuple[Callable[[], object], Callable[[], object]]]
"""name → (a warm-up on a sliver: the code paths once, the timed call)."""


def module_variants(mixers: list[str]) -> Variants:
    """'mixer axis' → a bidirectional module on that axis's 8 s shapes."""
    variants = {}
    for mixer in mixers:
        block = BidirectionalMamba(BSMamba2Config(mixer=mixer)).eval()
        for axis, (seqs, length) in AXES.items():
            x = torch.randn(seqs, length, block.linear.out_channels)
            variants[f"{mixer} {axis}"] = (lambda block=block, x=x: block(x[:2, :8]),
                                           lambda block=block, x=x: block(x))
    return variants


def model_variants(mixers: list[str], precisions: list[str]) -> Variants:
    """'mixer precision' → the paper-size model on an 8 s stereo spectrogram (warm-up: 1 s)."""
    variants = {}
    for mixer in mixers:
        cfg = BSMamba2Config(mixer=mixer)
        model = BSMamba2(cfg).eval()
        spec = stft(torch.randn(cfg.channels, int(SECONDS * cfg.sample_rate)) * 0.1, cfg)[None]
        for precision in precisions:
            def forward(spec, model=model, precision=precision):
                with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
                    return model(spec)
            sliver = spec[..., : spec.shape[-1] // 8]
            variants[f"{mixer} {precision}"] = (lambda f=forward, s=sliver: f(s),
                                                lambda f=forward, s=spec: f(s))
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", choices=("module", "model"), default="module")
    parser.add_argument("--mixers", default="mamba2,mamba")
    parser.add_argument("--precisions", default="fp32,bf16", help="model level: fp32 and/or bf16")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds, after a warm-up on a sliver")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mixers = args.mixers.split(",")
    with torch.inference_mode():
        variants = (module_variants(mixers) if args.level == "module"
                    else model_variants(mixers, args.precisions.split(",")))
        for warm_up, _ in variants.values():
            warm_up()
        runs: dict[str, list[dict[str, float | None]]] = {name: [] for name in variants}
        for round_ in range(args.rounds):
            for name, (_, timed) in variants.items():
                runs[name].append(r := measure(timed))
                print(f"round {round_} {name:<14} {r['cpu_s']:7.2f} s CPU {r['wall_s']:7.2f} s wall, "
                      f"others {r['others_cores']} cores", flush=True)
    best = {name: {"cpu_s": min(r["cpu_s"] for r in rs), "wall_s": min(r["wall_s"] for r in rs), "runs": rs}
            for name, rs in runs.items()}
    print(f"{'variant':<14} {'CPU s':>8} {'wall s':>8} least of {args.rounds} rounds, {args.threads} threads")
    for name, b in best.items():
        print(f"{name:<14} {b['cpu_s']:8.2f} {b['wall_s']:8.2f}")
    if args.json:
        meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                "bsmamba2": bsmamba2.__version__, "torch": torch.__version__,
                "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                "threads": args.threads, "level": args.level, "load_average_end": os.getloadavg()}
        args.json.write_text(json.dumps({"meta": meta, "results": best}, indent=1))


if __name__ == "__main__":
    main()
