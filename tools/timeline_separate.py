#!/usr/bin/env python
"""When the host and the GPU work during one warm ``separate_file``: each batch's submit (host
start and return) beside the GPU's start and end of that batch (CUDA events queued around it),
each taking of a batch's results, and each output's writes and its close (header and sync to
disk) in its writing thread. What the GPU does not hide shows as gaps: the head before the
first batch, host work between batches, the tail after the last.

Example (CUDA): ``python tools/timeline_separate.py --minutes 1 --json timeline.json``. Random
weights and audio, the paper model, bf16, batch auto; the last of ``--repeat`` runs is shown.
Times in ms from the call's start.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import bsmamba2
from bsmamba2.audio import io as audio_io
from bsmamba2.model import BSMamba2, BSMamba2Config
from bsmamba2.separation import engine

sys.path.insert(0, str(Path(__file__).parent))
from bench_separate import write_input


def record(log: list) -> None:
    """Log every submit (host span, CUDA events around its work), every taking of results, and
    each output's writes and closes (in its thread; the second close, in the main thread, is
    the rename into place)."""
    submit, result = engine.SegmentModel.submit, engine.Results.result

    def timed_submit(self, segments):
        begin, start = time.perf_counter(), torch.cuda.Event(enable_timing=True)
        start.record()
        out = submit(self, segments)
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        log.append(("submit", len(segments), begin, time.perf_counter(), start, end))
        return out

    def timed_result(self):
        begin = time.perf_counter()
        out = result(self)
        log.append(("result", 0, begin, time.perf_counter(), None, None))
        return out

    engine.SegmentModel.submit, engine.Results.result = timed_submit, timed_result
    for name in ("write", "close"):
        method = getattr(audio_io.AudioWriter, name)

        def timed(self, *args, _method=method, _name=name):
            begin = time.perf_counter()
            out = _method(self, *args)
            log.append((f"{_name} {Path(self.path).stem}", 0, begin, time.perf_counter(), None, None))
            return out

        setattr(audio_io.AudioWriter, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bsmamba2.yaml")
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--graphs", choices=["yes", "no"], default="yes")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = BSMamba2(BSMamba2Config.from_yaml(args.config))
    sep = bsmamba2.Separator(model, device="cuda", precision="bf16", batch_size="auto", progress=False,
                             cuda_graphs=args.graphs == "yes")
    log: list = []
    record(log)
    with tempfile.TemporaryDirectory(prefix="timeline_") as tmp:
        path = Path(tmp) / "input.wav"
        write_input(path, args.minutes, 44100)
        for _ in range(args.repeat):
            log.clear()
            torch.cuda.synchronize()
            base = torch.cuda.Event(enable_timing=True)
            base.record()
            begin = time.perf_counter()
            sep.separate_file(path, Path(tmp) / "out", overwrite=True)
            total = time.perf_counter() - begin
            torch.cuda.synchronize()
    rows = []
    for kind, size, start, end, gpu_start, gpu_end in log:
        row = {"kind": kind, "segments": size, "host_ms": [1e3 * (start - begin), 1e3 * (end - begin)]}
        if gpu_start is not None:
            row["gpu_ms"] = [base.elapsed_time(gpu_start), base.elapsed_time(gpu_end)]
        rows.append(row)
    busy = sum(r["gpu_ms"][1] - r["gpu_ms"][0] for r in rows if "gpu_ms" in r)
    rows.sort(key=lambda r: r["host_ms"][0])
    print(f"{'event':>20}  {'segments':>8}  {'host ms':>15}  {'GPU ms':>15}")
    for r in rows:
        gpu = "{:7.1f}-{:<7.1f}".format(*r["gpu_ms"]) if "gpu_ms" in r else ""
        host = "{:7.1f}-{:<7.1f}".format(*r["host_ms"])
        print(f"{r['kind']:>20}  {r['segments'] or '':>8}  {host:>15}  {gpu:>15}")
    print(f"total {1e3 * total:.1f} ms, GPU busy {busy:.1f} ms ({busy / (1e3 * total):.0%})")
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
                "settings": vars(args) | {"json": str(args.json)}}
        result = {"total_ms": 1e3 * total, "gpu_busy_ms": busy, "events": rows}
        args.json.write_text(json.dumps({**meta, **result}, indent=1))


if __name__ == "__main__":
    main()
