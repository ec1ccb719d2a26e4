#!/usr/bin/env python
"""Separating whole files: wall time, × real time and peak RAM (RSS) against file length.

Each length runs in a fresh process (so peak RSS is that run's alone) that builds the model,
then separates a generated stereo WAV file through ``Separator.separate_file`` (the path the
``bsmamba2 separate`` command takes: block reading, resampling, chunking, block writing).
``--model identity`` swaps the network for a mask of exactly one, which isolates what the
streaming pipeline itself costs, so long files can be measured on a slow CPU.

Example: ``python tools/bench_separate.py --config configs/bsmamba2-small.yaml --minutes 1 2 4
--json bench_separate.json``. Prints a table and writes JSON. Random weights and audio.
On a GPU: ``--device cuda --precision bf16 --batch-size auto --repeat 2`` — the first run of a
process includes compiling the Triton kernels (cold when TRITON_CACHE_DIR is empty), the
second shows the steady state; the table gives both. On CUDA the Separator compiles the
kernels when it is made (``setup s``, before the first run): the first call is the two added.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

import bsmamba2
from bsmamba2.allocator import tune_allocator
from bsmamba2.model import BSMamba2, BSMamba2Config
from bsmamba2.separation.chunking import Chunker
from bsmamba2.separation.engine import SegmentModel
from bsmamba2.separation.files import FileJob, run_job, run_jobs


class UnitMask(nn.Module):
    """The BSMamba2 interface with a mask of exactly one: the pipeline without the network."""

    def __init__(self, config: BSMamba2Config) -> None:
        super().__init__()
        self.config = config

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return spec.unsqueeze(1)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (compile workers)."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def write_input(path: Path, minutes: float, rate: int) -> None:
    """Stereo noise, written in blocks so the benchmark itself stays small."""
    rng = np.random.default_rng(0)
    total, block = int(minutes * 60 * rate), 10 * rate
    with sf.SoundFile(path, "w", rate, 2, subtype="FLOAT") as f:
        for start in range(0, total, block):
            f.write((rng.standard_normal((min(block, total - start), 2)) * 0.1).astype(np.float32))


def child(args: argparse.Namespace) -> None:
    """One measurement; prints a JSON line."""
    if not args.default_malloc:
        tune_allocator()  # as `bsmamba2 separate` does
    cfg = BSMamba2Config.from_yaml(args.config)
    torch.manual_seed(0)
    model = UnitMask(cfg) if args.model == "identity" else BSMamba2(cfg)
    setup = time.perf_counter()
    sep = bsmamba2.Separator(
        model,
        device=args.device,
        segment=args.segment,
        overlap=args.overlap,
        batch_size=args.batch_size if args.batch_size == "auto" else int(args.batch_size),
        precision=args.precision,
        progress=False,
        compile={"yes": True, "no": False, "auto": "auto"}[args.compile],
        cuda_graphs=args.graphs == "yes",
    )
    setup = time.perf_counter() - setup  # on CUDA the kernels compile here (separation/warmup.py)
    baseline = peak_rss_mb()
    if args.files:
        print(json.dumps(folder(sep, Path(args.child), args.files, baseline)))
        return
    walls, cpus = [], []
    for _ in range(args.repeat):
        start, cpu = time.perf_counter(), cpu_seconds()
        sep.separate_file(args.child, Path(args.child).parent / "out", overwrite=True)
        walls.append(time.perf_counter() - start)
        cpus.append(cpu_seconds() - cpu)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if sep.device.type == "cuda" else None
    print(json.dumps({"wall_s": walls[-1], "first_wall_s": walls[0], "separator_s": setup, "cpu_s": cpus[-1],
                      "first_cpu_s": cpus[0], "batch_size": sep.batch_size, "precision": sep.precision,
                      "compiled": sep.compiled,
                      "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": gpu,
                      "load_average": os.getloadavg()}))


def folder(sep: bsmamba2.Separator, path: Path, count: int, baseline: float) -> dict:
    """``count`` copies of ``path`` separated one after the other in this process, as
    ``bsmamba2 separate FOLDER`` does (after one file to compile and warm up), against one
    pass of the model over one whole file (the same audio as a single segment, eager), and
    against the model's own time on the file's segments (:func:`model_time`)."""
    inputs = path.parent / f"folder_{path.stem}"
    inputs.mkdir(exist_ok=True)
    jobs = []
    for number in range(count):
        copy = inputs / f"song{number:02d}.wav"
        if not copy.exists():
            os.link(path, copy)
        jobs.append(FileJob(copy, path.parent / "folder_out", {"overwrite": True}))
    run_job(sep, jobs[0])
    start = time.perf_counter()
    reports = list(run_jobs(sep, jobs))  # the next file overlaps the end of the last, as the command does
    wall = time.perf_counter() - start
    failed = [r.error for r in reports if r.status != "separated"]
    if failed:
        raise SystemExit(f"folder benchmark: {failed[0]}")
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    seconds = audio.shape[0] / rate
    model_s = model_time(sep, np.ascontiguousarray(audio.T))
    eager = SegmentModel(sep.model, sep.device, sep.precision, cuda_graphs=False)  # one pass as before
    passes = []
    for _ in range(2):  # the second is warm
        begin = time.perf_counter()
        eager([np.ascontiguousarray(audio.T)])
        passes.append(time.perf_counter() - begin)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if sep.device.type == "cuda" else None
    folder_xrt, pass_xrt = count * seconds / wall, seconds / passes[-1]
    return {"files": count, "wall_s": wall, "file_wall_s": [r.wall for r in reports],
            "folder_xrt": folder_xrt,
            "one_pass_s": passes[-1], "one_pass_xrt": pass_xrt, "share_of_one_pass": folder_xrt / pass_xrt,
            "model_s_per_file": model_s, "share_of_model_time": count * model_s / wall,
            "cuda_graphs": sep.runner.graphs is not None,
            "batch_size": sep.batch_size, "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": gpu}


def model_time(sep: bsmamba2.Separator, audio: np.ndarray) -> float:
    """The model's own time on one file's segments, in the separator's batches, all queued at
    once (no host work between them), warm: the least a folder can take per file."""
    chunk = sep.chunking
    chunker = Chunker(chunk.segment, chunk.hop, chunk.pad, audio.shape[0])
    segments = chunker.feed(audio) + chunker.finish()
    size = sep.batch_size
    batches = [segments[i : i + size] for i in range(0, len(segments), size)]
    times = []
    for _ in range(3):  # the graphs recorded by the folder already; the last of three
        if sep.device.type == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        for results in [sep.runner.submit(batch) for batch in batches]:
            results.result()
        times.append(time.perf_counter() - begin)
    return times[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bsmamba2-small.yaml", help="model config (YAML)")
    parser.add_argument("--model", choices=["network", "identity"], default="network")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--rate", type=int, default=44100, help="sample rate of the generated input")
    parser.add_argument("--segment", type=float, default=8.0)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", default="1", help="a number or auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1, help="runs per process; the last is reported")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16, fp16 or auto (the command's)")
    parser.add_argument("--compile", nargs="?", const="yes", default="no", choices=["yes", "no", "auto"],
                        help="torch.compile the Mamba-2 modules (yes; auto: as the command's default); "
                        "compile time counts in the wall time; set TORCHINDUCTOR_CACHE_DIR to an empty "
                        "folder for a cold cache")
    parser.add_argument("--files", type=int, default=0,
                        help="separate a folder of this many files of each length in one process (the "
                        "command's path for a folder) and compare with one pass of the model over one file")
    parser.add_argument("--graphs", choices=["yes", "no"], default="yes",
                        help="CUDA graphs of the model's forward (the Separator's default: yes)")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc malloc as it is (the CLI tunes it, see bsmamba2/allocator.py)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    rows = []
    settings = ["--config", args.config, "--model", args.model, "--segment", str(args.segment)]
    settings += ["--overlap", str(args.overlap), "--batch-size", str(args.batch_size)]
    settings += ["--device", args.device, "--repeat", str(args.repeat)]
    settings += ["--precision", args.precision] + (["--default-malloc"] if args.default_malloc else [])
    settings += ["--compile", args.compile, "--graphs", args.graphs]
    settings += ["--files", str(args.files)] if args.files else []
    if args.files:
        print(f"{'minutes':>8}  {'files':>5}  {'wall s':>8}  {'x RT':>7}  {'one pass s':>10}  {'x RT':>7}  "
              f"{'share':>6}  {'model s/file':>12}  {'share':>6}", flush=True)
    else:
        print(f"{'minutes':>8}  {'wall s':>9}  {'x RT':>7}  {'first s':>8}  {'setup s':>8}  {'CPU s':>8}"
              f"  {'baseline MB':>11}  {'peak MB':>8}  {'GPU MB':>7}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_separate_") as tmp:
        for minutes in args.minutes:
            path = Path(tmp) / f"input_{minutes:g}min.wav"
            write_input(path, minutes, args.rate)
            cmd = [sys.executable, __file__, *settings, "--child", str(path)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"the measurement of {minutes:g} min failed:\n{done.stderr[-3000:]}")
            out = done.stdout
            r = {"minutes": minutes, **json.loads(out.strip().splitlines()[-1])}
            rows.append(r)
            path.unlink()
            if args.files:
                print(f"{minutes:8g}  {r['files']:5d}  {r['wall_s']:8.2f}  {r['folder_xrt']:7.1f}  "
                      f"{r['one_pass_s']:10.3f}  {r['one_pass_xrt']:7.1f}  {r['share_of_one_pass']:6.1%}  "
                      f"{r['model_s_per_file']:12.3f}  {r['share_of_model_time']:6.1%}", flush=True)
                continue
            r["xrt"] = minutes * 60 / r["wall_s"]
            line = f"{minutes:8g}  {r['wall_s']:9.2f}  {r['xrt']:7.2f}  {r['first_wall_s']:8.2f}"
            line += f"  {r['separator_s']:8.2f}  {r['cpu_s']:8.1f}"
            gpu = f"{r['peak_gpu_mb']:7.0f}" if r["peak_gpu_mb"] is not None else f"{'-':>7}"
            print(f"{line}  {r['baseline_rss_mb']:11.0f}  {r['peak_rss_mb']:8.0f}  {gpu}", flush=True)
    if args.json:
        meta = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "bsmamba2": bsmamba2.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "child")},
        }
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
