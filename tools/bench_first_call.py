#!/usr/bin/env python
"""The first separation of a process on an empty Triton cache, in parts: imports, CUDA start,
model construction, the move to the GPU, the Separator (its kernel warm-up), the first and
the second ``separate_file`` of a generated stereo file; and every Triton compile (kernel,
seconds, thread), with the span they cover together (less than their sum when they overlap).

Example: ``python tools/bench_first_call.py --config configs/bsmamba2.yaml --json first.json``
(CUDA, bf16, batch auto). Each run is a fresh process with a new, empty TRITON_CACHE_DIR.
Random weights and audio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STARTED = time.perf_counter()


def _record_compiles(compiles: list) -> None:
    """Wrap Triton's ``compile`` wherever the JIT looks it up, to time each call."""
    import triton.compiler
    import triton.compiler.compiler
    import triton.runtime.jit

    original = triton.compiler.compiler.compile

    def timed(src, *args, **kwargs):
        begin = time.perf_counter()
        try:
            return original(src, *args, **kwargs)
        finally:
            name = getattr(getattr(src, "fn", None), "__name__", type(src).__name__)
            took, thread = time.perf_counter() - begin, threading.current_thread().name
            compiles.append({"kernel": name, "start_s": begin - STARTED, "seconds": took, "thread": thread})

    for module in (triton.compiler, triton.compiler.compiler, triton.runtime.jit):
        if hasattr(module, "compile"):
            module.compile = timed


def child(args: argparse.Namespace) -> None:
    parts, compiles = {}, []
    mark = time.perf_counter()

    def part(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        parts[name] = now - mark
        mark = now

    import torch

    import bsmamba2
    from bsmamba2.model import BSMamba2, BSMamba2Config

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_separate import write_input

    _record_compiles(compiles)
    part("imports")
    torch.zeros(1, device="cuda")
    part("cuda_start")
    torch.manual_seed(0)
    model = BSMamba2(BSMamba2Config.from_yaml(args.config)).eval()
    part("model_build")
    model.cuda()
    torch.cuda.synchronize()
    part("to_gpu")
    sep = bsmamba2.Separator(model, device="cuda", precision="bf16", batch_size="auto", progress=False)
    part("separator")
    path = Path(args.child)
    write_input(path, args.minutes, 44100)
    mark = time.perf_counter()
    sep.separate_file(path, path.parent / "out", overwrite=True)
    part("first_separate_file")
    sep.separate_file(path, path.parent / "out", overwrite=True)
    part("second_separate_file")
    seconds = sum(c["seconds"] for c in compiles)
    span = max((c["start_s"] + c["seconds"] for c in compiles), default=0) - min(
        (c["start_s"] for c in compiles), default=0)
    print(json.dumps({"parts_s": parts, "first_call_s": parts["separator"] + parts["first_separate_file"],
                      "compiles": compiles, "compile_seconds_sum": seconds, "compile_span_s": span,
                      "batch_size": sep.batch_size}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bsmamba2.yaml")
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="first_call_") as tmp:
        env = {**os.environ, "TRITON_CACHE_DIR": str(Path(tmp) / "triton")}
        cmd = [sys.executable, __file__, "--config", args.config, "--minutes", str(args.minutes),
               "--child", str(Path(tmp) / "input.wav")]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"the measurement failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name, seconds in result["parts_s"].items():
        print(f"{name:>22}  {seconds:7.3f} s")
    print(f"{'first call':>22}  {result['first_call_s']:7.3f} s (Separator + first separate_file)")
    for c in result["compiles"]:
        print(f"{'compile ' + c['kernel']:>32}  {c['seconds']:6.3f} s at {c['start_s']:6.2f} s  "
              f"{c['thread']}")
    print(f"{len(result['compiles'])} compiles, {result['compile_seconds_sum']:.2f} s in all, "
          f"spanning {result['compile_span_s']:.2f} s")
    if args.json:
        import torch

        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
                "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
        args.json.write_text(json.dumps({**meta, **result}, indent=1))


if __name__ == "__main__":
    main()
