#!/usr/bin/env python
"""CPU cost per mixer on the shapes of 8 s of stereo (62 bands × 801 frames): inference, the
PyTorch path, the tuned allocator as the command line runs.

``--level module``: one bidirectional module of the paper model per mixer and axis.
``--level model``: the whole paper-size model (``BSMamba2Config(mixer=...)``) on one 8 s
stereo spectrogram, per precision (bf16 = CPU autocast).
``--level scan``: the Mamba-1 selective scan alone on each axis's inputs (d_inner 1024,
d_state 16), per precision, our C kernel against the PyTorch scan.

A mixer written ``mamba:torch`` (or ``mamba:c``) runs with ``BSMAMBA2_CPU_SCAN`` set so, to
compare the CPU scans inside the model in one run.

The mixers run in turn, round after round, in one process; each run reports the process's
CPU seconds (user + system) and wall seconds, and — on Linux — how many cores other
processes kept busy meanwhile (``others_cores``, from /proc/stat): on a shared machine the
CPU seconds compare the mixers, and a run with others ≈ 0 is a quiet one. Prints a table and
writes JSON (every run, and per variant the least CPU and wall seconds over the rounds).

    python tools/bench_mixers_cpu.py --level model --mixers mamba2,mamba --rounds 2 --json cpu.json
    python tools/bench_mixers_cpu.py --level scan --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch

import bsmamba2
from bsmamba2.allocator import tune_allocator
from bsmamba2.model import BSMamba2, BSMamba2Config, stft
from bsmamba2.model.blocks import BidirectionalMamba
from bsmamba2.model.dt_init import init_dt_bias
from bsmamba2.ops import selective_scan

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


@contextlib.contextmanager
def cpu_scan(mode: str | None) -> Iterator[None]:
    """``BSMAMBA2_CPU_SCAN=mode`` meanwhile (None: as it is)."""
    before = os.environ.get("BSMAMBA2_CPU_SCAN")
    if mode is not None:
        os.environ["BSMAMBA2_CPU_SCAN"] = mode
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("BSMAMBA2_CPU_SCAN", None)
        else:
            os.environ["BSMAMBA2_CPU_SCAN"] = before


def with_scan(fn: Callable[[], object], mode: str | None) -> Callable[[], object]:
    def run() -> object:
        with cpu_scan(mode):
            return fn()
    return run


def split_mixer(name: str) -> tuple[str, str | None]:
    """'mamba:torch' → ('mamba', 'torch'); 'mamba2' → ('mamba2', None)."""
    mixer, _, mode = name.partition(":")
    return mixer, mode or None


def module_variants(mixers: list[str]) -> Variants:
    """'mixer axis' → a bidirectional module on that axis's 8 s shapes."""
    variants = {}
    for name in mixers:
        mixer, mode = split_mixer(name)
        block = BidirectionalMamba(BSMamba2Config(mixer=mixer)).eval()
        for axis, (seqs, length) in AXES.items():
            x = torch.randn(seqs, length, block.linear.out_channels)
            variants[f"{name} {axis}"] = (with_scan(lambda block=block, x=x: block(x[:2, :8]), mode),
                                          with_scan(lambda block=block, x=x: block(x), mode))
    return variants


def model_variants(mixers: list[str], precisions: list[str]) -> Variants:
    """'mixer precision' → the paper-size model on an 8 s stereo spectrogram (warm-up: 1 s)."""
    variants = {}
    for name in mixers:
        mixer, mode = split_mixer(name)
        cfg = BSMamba2Config(mixer=mixer)
        model = BSMamba2(cfg).eval()
        spec = stft(torch.randn(cfg.channels, int(SECONDS * cfg.sample_rate)) * 0.1, cfg)[None]
        for precision in precisions:
            def forward(spec, model=model, precision=precision):
                with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
                    return model(spec)
            sliver = spec[..., : spec.shape[-1] // 8]
            variants[f"{name} {precision}"] = (with_scan(lambda f=forward, s=sliver: f(s), mode),
                                               with_scan(lambda f=forward, s=spec: f(s), mode))
    return variants


def scan_variants(precisions: list[str]) -> Variants:
    """'scan axis precision mode' → the selective scan of the paper's Mamba-1 layer (d_inner
    1024, d_state 16) on one direction of that axis's 8 s inputs, as the layer hands them in
    (channel-last views; bf16 inputs as under autocast), by the C kernel and the PyTorch scan."""
    variants, d, n = {}, 1024, 16
    for axis, (seqs, length) in AXES.items():
        for precision in precisions:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            xz = torch.randn(seqs, length, 3 * d, dtype=dtype)
            u, delta, z = (t.transpose(1, 2) for t in xz.split(d, -1))
            B, C = (t.transpose(1, 2) for t in torch.randn(seqs, length, 2 * n, dtype=dtype).split(n, -1))
            A, D, bias = -torch.arange(1.0, n + 1).repeat(d, 1), torch.ones(d), init_dt_bias(d)

            def scan(k=length, u=u, delta=delta, z=z, B=B, C=C, A=A, D=D, bias=bias):
                return selective_scan(u[..., :k], delta[..., :k], A, B[..., :k], C[..., :k], D, z[..., :k],
                                      bias, True)
            for mode in ("c", "torch"):
                variants[f"scan {axis} {precision} {mode}"] = (with_scan(lambda f=scan: f(4), mode),
                                                               with_scan(scan, mode))
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", choices=("module", "model", "scan"), default="module")
    parser.add_argument("--mixers", default="mamba2,mamba")
    parser.add_argument("--precisions", default="fp32,bf16", help="model and scan level: fp32 and/or bf16")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds, after a warm-up on a sliver")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mixers = args.mixers.split(",")
    with torch.inference_mode():
        precisions = args.precisions.split(",")
        variants = {"module": lambda: module_variants(mixers),
                    "model": lambda: model_variants(mixers, precisions),
                    "scan": lambda: scan_variants(precisions)}[args.level]()
        for warm_up, _ in variants.values():
            warm_up()
        runs: dict[str, list[dict[str, float | None]]] = {name: [] for name in variants}
        for round_ in range(args.rounds):
            for name, (_, timed) in variants.items():
                runs[name].append(r := measure(timed))
                print(f"round {round_} {name:<24} {r['cpu_s']:7.2f} s CPU {r['wall_s']:7.2f} s wall, "
                      f"others {r['others_cores']} cores", flush=True)
    best = {name: {"cpu_s": min(r["cpu_s"] for r in rs), "wall_s": min(r["wall_s"] for r in rs), "runs": rs}
            for name, rs in runs.items()}
    print(f"{'variant':<24} {'CPU s':>8} {'wall s':>8} least of {args.rounds} rounds, {args.threads} threads")
    for name, b in best.items():
        print(f"{name:<24} {b['cpu_s']:8.2f} {b['wall_s']:8.2f}")
    if args.json:
        meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                "bsmamba2": bsmamba2.__version__, "torch": torch.__version__,
                "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                "threads": args.threads, "level": args.level, "load_average_end": os.getloadavg()}
        args.json.write_text(json.dumps({"meta": meta, "results": best}, indent=1))


if __name__ == "__main__":
    main()
