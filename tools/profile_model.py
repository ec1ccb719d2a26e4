#!/usr/bin/env python
"""Where the time of BSMamba2 goes: device time per kernel family, for a pass and a training step.

Two workloads, each profiled with ``torch.profiler`` over ``--steps`` repetitions after warm-up:

- ``separate``: one pass over ``--seconds`` of stereo audio (STFT, model, iSTFT) under
  inference mode and autocast, as ``benchmark_mamba_ssm.py``'s "separate 60 s" row;
- ``file``: ``Separator.separate_file`` on a generated ``--file-minutes`` stereo WAV (the
  ``bsmamba2 separate`` path with its defaults: reading, segments, batches, overlap-add,
  writing), to see how much of it the GPU is busy;
- ``train``: the recipe's training step (``tools/gpu_train_memory.py``: loss, backward,
  clipping, AdamW, EMA) with the recipe's recompute setting.

Every kernel is put in one family (:data:`FAMILIES`) from where it was launched: the model's
parts are marked by module hooks and the mixer's ops by wrappers (``record_function``
scopes); a backward kernel inherits the scopes of the forward op that recorded its autograd
node (the profiler's sequence numbers). "GPU idle" is the time inside the profiled span when
no kernel runs: launch gaps and host work. On a CPU the leaf operators stand for kernels
(there is no idle row). Prints a table and writes JSON (``--json``).

GPU, paper model: ``python tools/profile_model.py --json profile.json`` (with Mamba-1 mixers:
``--config configs/bsmamba2-mamba1.yaml``, Mamba-3: ``configs/bsmamba2-mamba3.yaml``);
CPU smoke run: ``--config configs/bsmamba2-small.yaml --device cpu --seconds 2 --train-batch 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

import bsmamba2
from bsmamba2 import ops
from bsmamba2.model import BSMamba2, BSMamba2Config, istft, stft
from bsmamba2.model.bands import BandSplit, MaskEstimator

sys.path.insert(0, str(Path(__file__).parent))
from bench_separate import write_input
from gpu_train_memory import DTYPES, training_step

FAMILIES = (
    "SSD scan", "selective scan (Mamba-1)", "Mamba-3 scan", "causal conv1d", "norms", "GEMMs (mixers, merge)",
    "band split + mask estimators", "STFT / iSTFT", "copies, flips, transposes", "element-wise (other)",
    "loss", "optimizer + EMA",
)
HOST_EVENTS = ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver")
DEVICE_EVENTS = ("kernel", "gpu_memcpy", "gpu_memset")
IDLE = "GPU idle (launch gaps, host)"
OPS = {"ssd_scan": "SSD scan", "selective_scan": "selective scan (Mamba-1)", "mamba3_scan": "Mamba-3 scan",
       "causal_conv1d": "causal conv1d", "gated_rms_norm": "norms"}
"""The mixer's ops, each wrapped in a scope ``op:<name>``, and their families."""
SCOPES = {"band_split": "band split + mask estimators", "mask_estimator": "band split + mask estimators",
          "final_norm": "norms", "loss": "loss", "optimizer": "optimizer + EMA"}
"""Scopes that decide the family of everything launched inside them."""
GEMM_NAMES = ("gemm", "nvjet", "xmma", "cutlass", "cublas", "aten::mm", "aten::addmm", "aten::bmm",
              "aten::baddbmm", "aten::linear", "aten::matmul")
COPY_NAMES = ("copy", "flip", "cat", "transpose", "clone", "contiguous", "stack")
FFT_NAMES = ("fft", "aten::stft", "aten::istft")


def classify(names: tuple[str, ...]) -> str:
    """The family of a kernel from its name and the scopes and operators around its launch
    (outermost first, the kernel's own name last)."""
    for name in reversed(names):
        if name.startswith("op:") and name[3:] in OPS:
            return OPS[name[3:]]
    for name in reversed(names):
        if name in SCOPES:
            return SCOPES[name]
    lowered = [n.lower() for n in names]
    for keys, family in ((FFT_NAMES, "STFT / iSTFT"), (GEMM_NAMES, "GEMMs (mixers, merge)"),
                         (COPY_NAMES, "copies, flips, transposes")):
        # the kernel's name first, then the operator that launched it
        if any(k in lowered[-1] for k in keys) or any(any(k in n for k in keys) for n in lowered[-4:-1]):
            return family
    return "element-wise (other)"


@contextlib.contextmanager
def scopes(model: nn.Module) -> Iterator[None]:
    """Mark the model's parts and the mixer's ops with profiler scopes while inside."""
    names = {BandSplit: "band_split", MaskEstimator: "mask_estimator"}
    handles, open_scopes = [], []

    def enter(name: str) -> Callable:
        def hook(module, args):
            scope = record_function(name)
            scope.__enter__()
            open_scopes.append(scope)
        return hook

    def leave(module, args, output):
        open_scopes.pop().__exit__(None, None, None)

    for name, module in model.named_modules():
        scope = names.get(type(module))
        if name.split(".")[-1] in ("final_norm", "loss"):
            scope = name.split(".")[-1]
        if scope:
            handles += [module.register_forward_pre_hook(enter(scope)),
                        module.register_forward_hook(leave)]
    originals = {name: getattr(ops, name) for name in OPS}

    def wrapped(name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            with record_function(f"op:{name}"):
                return fn(*args, **kwargs)
        return call

    for name, fn in originals.items():
        setattr(ops, name, wrapped(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(ops, name, fn)
        for handle in handles:
            handle.remove()


def _launch_stacks(events: list[dict]) -> tuple[dict[int, tuple[str, ...]], dict[tuple, tuple]]:
    """The names of the scopes and operators around each kernel launch (by correlation id),
    with the forward's added for a launch in the backward; and per CPU operator (by pid, tid,
    ts) the same names and its self time (its time less its children's)."""
    by_thread: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in HOST_EVENTS:
            by_thread[(e["pid"], e["tid"])].append(e)
    forward_of: dict[int, tuple[str, ...]] = {}  # autograd sequence number → forward stack
    found: list[tuple[dict, tuple[str, ...], int | None]] = []
    self_us: dict[int, float] = {}
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack: list[dict] = []
        for e in thread_events:
            while stack and stack[-1]["ts"] + stack[-1].get("dur", 0) <= e["ts"]:
                stack.pop()
            if stack and stack[-1]["cat"] == "cpu_op" and e["cat"] == "cpu_op":
                self_us[id(stack[-1])] -= e.get("dur", 0)
            names = (*(s["name"] for s in stack), e["name"])
            args = e.get("args", {})
            backward = next((s["args"].get("Sequence number") for s in reversed(stack)
                             if s["name"].startswith("autograd::engine::evaluate_function")), None)
            if args.get("Sequence number") is not None and not args.get("Fwd thread id") and backward is None:
                forward_of[args["Sequence number"]] = names  # the last op that saw the number made the node
            if e["cat"] != "user_annotation":
                found.append((e, names, backward))
            self_us[id(e)] = e.get("dur", 0)
            stack.append(e)
    launches, cpu_ops = {}, {}
    for e, names, backward in found:
        full = forward_of.get(backward, ()) + names if backward is not None else names
        if e["cat"] == "cpu_op":
            cpu_ops[(e["pid"], e["tid"], e["ts"])] = (full, self_us[id(e)])
        elif "correlation" in e.get("args", {}):
            launches[e["args"]["correlation"]] = full
    return launches, cpu_ops


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def family_table(trace: dict, device: str, steps: int) -> dict:
    """Device time per family (ms per step), its share, kernel counts and the top kernels."""
    events = trace["traceEvents"]
    launches, cpu_ops = _launch_stacks(events)
    if device == "cuda":  # (name, start, duration, the names around its launch with its own last)
        items = [(e["name"], e["ts"], e.get("dur", 0),
                  (*launches.get(e.get("args", {}).get("correlation"), ("",))[:-1], e["name"]))
                 for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_EVENTS]
    else:  # the operators' self times stand for kernels
        items = [(stack[-1], key[2], self_time, stack) for key, (stack, self_time) in cpu_ops.items()]
    time_us: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    top: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for name, _, dur, stack in items:
        fam = classify(stack)
        time_us[fam] += dur
        count[fam] += 1
        top[fam][name[:90]] += dur
    busy = sum(time_us.values())
    rows = [{"family": f, "ms": time_us[f] / 1e3 / steps, "kernels": count[f] / steps,
             "top": sorted(((n, t / 1e3 / steps) for n, t in top[f].items()), key=lambda x: -x[1])[:4]}
            for f in FAMILIES if count[f]]
    span = 0.0
    if device == "cuda" and items:
        span = max(ts + dur for _, ts, dur, _ in items) - min(ts for _, ts, _, _ in items)
        idle = span - _union_us([(ts, ts + d) for _, ts, d, _ in items])
        rows.append({"family": IDLE, "ms": idle / 1e3 / steps, "kernels": 0, "top": []})
    total = sum(r["ms"] for r in rows)
    for r in rows:
        r["share"] = r["ms"] / total if total else 0.0
    return {"rows": rows, "kernel_ms": busy / 1e3 / steps, "span_ms": span / 1e3 / steps,
            "kernels_per_step": len(items) / steps}


def run_profile(fn: Callable[[], object], model: nn.Module, device: torch.device, warmup: int,
                steps: int) -> dict:
    """Wall time per step without the profiler (median), then the family table under it."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak_gb = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with scopes(model), profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        sync()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    table = family_table(trace, device.type, steps)
    table["wall_ms"] = 1e3 * statistics.median(times)
    table["wall_times_ms"] = [1e3 * t for t in times]
    table["peak_gb"] = peak_gb
    return table


def separate_pass(cfg: BSMamba2Config, args: argparse.Namespace, device: torch.device):
    torch.manual_seed(args.seed)
    model = BSMamba2(cfg).to(device).eval()
    audio = torch.randn(cfg.channels, int(args.seconds * cfg.sample_rate), device=device) * 0.1
    dtype = DTYPES[args.precision]

    def one_pass() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            spec = stft(audio, cfg)[None]
            out = model(spec)[0, 0]
            return istft(out.to(spec.dtype), cfg, length=audio.shape[-1])

    return model, one_pass


def separate_file(cfg: BSMamba2Config, args: argparse.Namespace, device: torch.device, folder: Path):
    torch.manual_seed(args.seed)
    model = BSMamba2(cfg)
    separator = bsmamba2.Separator(model, device=device, progress=False)
    path = folder / "mixture.wav"
    write_input(path, args.file_minutes, cfg.sample_rate)

    def one_file() -> None:
        separator.separate_file(path, folder / "out", overwrite=True)

    return model, one_file


def print_table(title: str, table: dict) -> None:
    print(f"\n{title}: wall {table['wall_ms']:.1f} ms per step (no profiler), "
          f"kernels {table['kernel_ms']:.1f} ms, span {table['span_ms']:.1f} ms, "
          f"{table['kernels_per_step']:.0f} kernels per step"
          + (f", peak {table['peak_gb']:.1f} GB" if table["peak_gb"] is not None else ""))
    print(f"{'family':<32} {'ms':>8} {'share':>7} {'kernels':>8}  top kernel (ms)")
    for r in table["rows"]:
        head = f"{r['top'][0][0][:60]} ({r['top'][0][1]:.2f})" if r["top"] else ""
        print(f"{r['family']:<32} {r['ms']:>8.2f} {100 * r['share']:>6.1f}% {r['kernels']:>8.0f}  {head}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bsmamba2.yaml", help="model config (YAML)")
    parser.add_argument("--workloads", default="separate,train", help="comma list of separate, file, train")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio of the separation pass")
    parser.add_argument("--file-minutes", type=float, default=1.0, help="length of the file workload")
    parser.add_argument("--train-batch", type=int, default=5, help="training batch (segments)")
    parser.add_argument("--train-seconds", type=float, default=8.0, help="training segment length")
    parser.add_argument("--recompute", default="cheap:5", help="recompute setting (the recipe's: cheap:5)")
    parser.add_argument("--precision", choices=tuple(DTYPES), default="bf16", help="autocast dtype")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions (compiles in the first)")
    parser.add_argument("--steps", type=int, default=3, help="timed and profiled repetitions")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cfg = BSMamba2Config.from_yaml(args.config)
    results = {}
    scratch = tempfile.TemporaryDirectory()
    for workload in args.workloads.split(","):
        if workload == "file":
            model, fn = separate_file(cfg, args, device, Path(scratch.name))
            title = f"separate_file, {args.file_minutes:g}-minute stereo WAV, default settings"
        elif workload == "separate":
            model, fn = separate_pass(cfg, args, device)
            title = f"separate {args.seconds:g} s stereo, one pass"
        elif workload == "train":
            ns = argparse.Namespace(seed=args.seed, batch_size=args.train_batch, seconds=args.train_seconds,
                                    precision=args.precision)
            model, fn = training_step(cfg, args.recompute, ns, device)
            title = (f"training step, batch {args.train_batch} × {args.train_seconds:g} s, "
                     f"recompute {args.recompute}")
        else:
            parser.error(f"unknown workload {workload!r}")
        results[workload] = {"title": title, **run_profile(fn, model, device, args.warmup, args.steps)}
        print_table(title, results[workload])
        del model, fn
        if device.type == "cuda":
            torch.cuda.empty_cache()
    scratch.cleanup()
    if args.json:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "bsmamba2": bsmamba2.__version__, "torch": torch.__version__,
                "python": platform.python_version(), "device": name,
                "kernels": ops.active_backend(device, DTYPES[args.precision] or torch.float32),
                "config": args.config, "precision": args.precision, "steps": args.steps,
                "command": " ".join(sys.argv)}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
