#!/usr/bin/env python
"""cSDR + uSDR of one track: bsmamba2's fast path vs museval, wall time and peak memory.

Example (the issue-5 measurement): ``python tools/bench_metrics.py --seconds 180 --json bench_metrics.json``
Scores 4 stereo stems at 44.1 kHz jointly (as museval scores vocals/drums/bass/other). Each
method runs in its own process, after the audio is made, so that its peak memory is its own:
the peak resident memory above what the process held before the call (Linux VmHWM, reset).
Also checks that both give the same per-window SDR. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

import bsmamba2
from bsmamba2.evaluation.metrics import framewise_sdr, median_sdr, usdr

RATE = 44100


def make_track(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(4, 2, samples) float32 references and estimates; vocals silent for 20 s."""
    rng = np.random.default_rng(0)
    n = int(seconds * RATE)
    references = rng.standard_normal((4, 2, n), dtype=np.float32) * np.float32(0.1)
    references[0, :, 10 * RATE : 30 * RATE] = 0
    estimates = references + rng.standard_normal(references.shape, dtype=np.float32) * np.float32(0.05)
    return references, estimates


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _fast(references: np.ndarray, estimates: np.ndarray, device: str) -> np.ndarray:
    sdr = framewise_sdr(references, estimates, device=device)
    median_sdr(sdr)
    for ref, est in zip(references, estimates, strict=True):
        usdr(ref, est)
    return sdr


def _museval(references: np.ndarray, estimates: np.ndarray, device: str) -> np.ndarray:
    import museval

    sdr, _, _, _ = museval.evaluate(np.moveaxis(references, -1, -2), np.moveaxis(estimates, -1, -2))
    median_sdr(sdr)
    return sdr


def _child(method: str, seconds: float, device: str, repeats: int, queue: mp.Queue) -> None:
    references, estimates = make_track(seconds)
    fn = {"fast": _fast, "museval": _museval}[method]
    if device.startswith("cuda"):
        fn(references[:, :, :RATE], estimates[:, :, :RATE], device)  # CUDA start-up
    times = []
    before = _memory_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        sdr = fn(references, estimates, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (_memory_kib("VmHWM") - before) / 2**20
    gpu_peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    queue.put({"times": times, "peak_gib": peak, "gpu_peak_gib": gpu_peak, "sdr": sdr})


def run(method: str, seconds: float, device: str, repeats: int) -> dict:
    """Times and peak memory of ``method`` in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(method, seconds, device, repeats, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="track length")
    parser.add_argument("--device", default="cpu", help="device of the fast path (cpu, cuda)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the fast path (best kept)")
    parser.add_argument("--skip-museval", action="store_true", help="time the fast path only")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()

    results = {"fast": run("fast", args.seconds, args.device, args.repeats)}
    if not args.skip_museval:
        results["museval"] = run("museval", args.seconds, "cpu", 1)
    print(
        f"cSDR + uSDR, 4 stereo stems, {args.seconds:g} s at {RATE} Hz; fast path on {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'method':<9} {'seconds':>9} {'peak RAM GiB':>13} {'speed-up':>9}")
    rows = []
    for method, r in results.items():
        best = min(r["times"])
        speedup = min(results["museval"]["times"]) / best if "museval" in results else None
        rows.append(
            {
                "method": method,
                "seconds": best,
                "times": r["times"],
                "peak_ram_gib": r["peak_gib"],
                "gpu_peak_gib": r["gpu_peak_gib"],
                "speedup_vs_museval": speedup,
            }
        )
        print(
            f"{method:<9} {best:>9.3f} {r['peak_gib']:>13.3f} "
            f"{'' if speedup is None else f'{speedup:.0f}x':>9}"
        )
    parity = None
    if "museval" in results:
        fast, slow = results["fast"]["sdr"], results["museval"]["sdr"]
        same_nan = bool((np.isnan(fast) == np.isnan(slow)).all())
        finite = ~np.isnan(slow)
        parity = {"same_nan_windows": same_nan, "max_abs_diff_db": float(np.abs(fast - slow)[finite].max())}
        print(
            f"per-window SDR: same NaN windows {same_nan}, max |fast - museval| "
            f"{parity['max_abs_diff_db']:.2e} dB"
        )
    if args.json:
        meta = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "bsmamba2": bsmamba2.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "museval": metadata.version("museval"),
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "cpus": mp.cpu_count(),
            "threads": torch.get_num_threads(),
            "seconds_audio": args.seconds,
            "device": args.device,
        }
        args.json.write_text(json.dumps({"meta": meta, "results": rows, "parity": parity}, indent=2) + "\n")


if __name__ == "__main__":
    main()
