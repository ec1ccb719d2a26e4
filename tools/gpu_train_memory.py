#!/usr/bin/env python
"""Training-step time and peak memory of BSMamba2 for each activation-recompute setting.

The step of :class:`bsmamba2.training.BSMamba2Module` under Lightning's ``bf16-mixed``:
forward and loss under bf16 autocast, backward, gradient clipping at norm 3, AdamW step,
EMA update. Random weights and audio (the cost does not depend on them); a fresh model and
optimizer per setting. Prints a table (median step time after warm-up, peak
``torch.cuda.max_memory_allocated``) and writes JSON with ``--json``.

Paper model on a GPU (the issue-3 target: ≤ 450 ms, ≤ 40 GB at batch 5 × 8 s)::

    python tools/gpu_train_memory.py --json train_memory.json

CPU smoke run: ``--config configs/bsmamba2-small.yaml --seconds 1 --device cpu``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

import bsmamba2
from bsmamba2 import ops
from bsmamba2.model import BSMamba2Config
from bsmamba2.model.mixers import RECOMPUTE_MODES
from bsmamba2.training import EMA, BSMamba2Module

GRADIENT_CLIP = 3.0
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(cfg: BSMamba2Config, setting: str, args: argparse.Namespace,
                  device: torch.device) -> tuple[BSMamba2Module, Callable[[], float]]:
    """A fresh module and optimizer, and one step of the recipe on them as a callable that
    returns the loss.

    ``setting``: a recompute mode, or ``mode:k`` to recompute in the first k layers only.
    ``args``: ``seed``, ``batch_size``, ``seconds`` and ``precision`` (this script's options).
    """
    mode, _, layers = setting.partition(":")
    torch.manual_seed(args.seed)
    layers = int(layers) if layers else None
    module = BSMamba2Module(net=cfg, recompute=mode, recompute_layers=layers).to(device)
    optimizer = module.configure_optimizers()
    ema = EMA(module.model.parameters())
    length = int(args.seconds * cfg.sample_rate)
    mixture = torch.randn(args.batch_size, cfg.channels, length, device=device) * 0.1
    targets = torch.randn(args.batch_size, len(module.targets), cfg.channels, length, device=device) * 0.1
    dtype = DTYPES[args.precision]

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = module.compute_loss((mixture, targets))
        loss.backward()
        with torch.profiler.record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(module.model.parameters(), GRADIENT_CLIP)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(module.model.parameters())
        return float(loss.detach())  # a host sync, as Lightning's finite-loss check does

    return module, step


def measure(cfg: BSMamba2Config, setting: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Step times and peak memory (CUDA only) of ``args.warmup + args.steps`` steps."""
    _, step = training_step(cfg, setting, args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for _ in range(args.warmup + args.steps):
        _sync(device)
        start = time.perf_counter()
        losses.append(step())
        _sync(device)
        times.append(time.perf_counter() - start)
    row = {
        "recompute": setting,
        "median_ms": 1e3 * statistics.median(times[args.warmup:]),
        "times_ms": [1e3 * t for t in times],
        "losses": losses,
        "peak_gb": None,
        "reserved_gb": None,
    }
    if device.type == "cuda":
        row["peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        row["reserved_gb"] = torch.cuda.max_memory_reserved(device) / 1e9
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bsmamba2.yaml", help="model config (YAML)")
    parser.add_argument("--modes", default="cheap:5,mixer:4,none",
                        help="comma list of recompute settings: MODE, or MODE:K for the first K layers only")
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="segment length")
    parser.add_argument("--precision", choices=tuple(DTYPES), default="bf16", help="autocast dtype")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (Triton compiles in the first)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    unknown = [m for m in modes if not re.fullmatch(rf"({'|'.join(RECOMPUTE_MODES)})(:\d+)?", m)]
    if unknown:
        parser.error(f"unknown recompute settings {unknown}; choose from {', '.join(RECOMPUTE_MODES)}")
    if args.warmup < 0 or args.steps < 1:
        parser.error("--warmup must be ≥ 0 and --steps ≥ 1")

    device = torch.device(args.device)
    cfg = BSMamba2Config.from_yaml(args.config)
    rows = []
    for mode in modes:
        try:
            rows.append(measure(cfg, mode, args, device))
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError, or Triton's launch error
            if "out of memory" not in str(exc).lower():
                raise
            peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
            rows.append({"recompute": mode, "median_ms": None, "peak_gb": peak, "reserved_gb": None,
                         "error": f"out of memory: {str(exc).splitlines()[0][:200]}"})
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    backend = ops.active_backend(device, DTYPES[args.precision] or torch.float32)
    print(f"BSMamba2 training step, {args.config}, batch {args.batch_size} × {args.seconds:g} s, "
          f"{args.precision}, {name}, kernels: {backend}, median of {args.steps} after {args.warmup} warm-up")
    print(f"{'recompute':<10} {'step ms':>9} {'peak GB':>9} {'reserved GB':>12}  (MODE:K: first K layers)")
    for r in rows:
        cells = [f"{r[k]:.1f}" if r[k] is not None else "-" for k in ("median_ms", "peak_gb", "reserved_gb")]
        note = f"  ({r['error']})" if "error" in r else ""
        print(f"{r['recompute']:<10} {cells[0]:>9} {cells[1]:>9} {cells[2]:>12}{note}")
    if args.json:
        meta = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "bsmamba2": bsmamba2.__version__, "torch": torch.__version__,
            "triton": _version("triton"), "python": platform.python_version(), "device": name,
            "kernels": backend, "config": args.config, "batch_size": args.batch_size,
            "seconds": args.seconds, "precision": args.precision, "warmup": args.warmup, "steps": args.steps,
        }
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))


def _version(package: str) -> str | None:
    try:
        return __import__(package).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
