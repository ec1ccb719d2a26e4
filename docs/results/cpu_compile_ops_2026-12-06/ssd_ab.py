"""Interleaved A/B of the reference ssd_scan: the time-axis piece of the paper model (16 x 801,
16 heads x 64, d_state 128), bf16 autocast, inference mode; the base tree's module (from
/tmp/base, `git worktree add /tmp/base 1b27836`) against this tree's, in one process.

``python ssd_ab.py [threads] [rounds]``: prints the least wall and CPU time of each after the
first round, and the largest difference of their outputs.
"""

import importlib.util
import resource
import sys
import time

import torch

import bsmamba2.ops.reference.ssd as new


def load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    torch.set_num_threads(threads)
    base = load("base_ssd", "/tmp/base/bsmamba2/ops/reference/ssd.py")
    torch.manual_seed(0)
    b, length, h, p, n = 16, 801, 16, 64, 128
    x = torch.randn(b, length, h, p).bfloat16()
    dt = (torch.randn(b, length, h) - 1).bfloat16()
    A = -torch.exp(torch.rand(h) * 2.5)
    B, C = (torch.randn(b, length, 1, n).bfloat16() for _ in range(2))
    D, bias = torch.randn(h), torch.randn(h) * 0.5
    times = {"base": [], "new": []}
    outs = {}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(rounds):
            for name, module in (("base", base), ("new", new)):
                wall, cpu = time.perf_counter(), cpu_seconds()
                outs[name] = module.ssd_scan(x, dt, A, B, C, D, dt_bias=bias, dt_softplus=True)
                times[name].append((time.perf_counter() - wall, cpu_seconds() - cpu))
    diff = (outs["base"].float() - outs["new"].float()).abs().max().item()
    print("max abs diff", diff, "scale", outs["base"].float().abs().max().item())
    for name, runs in times.items():
        wall, cpu = min(w for w, _ in runs[1:]), min(c for _, c in runs[1:])
        print(name, f"wall min {wall:.3f}  cpu min {cpu:.3f}", [round(c, 3) for _, c in runs])


if __name__ == "__main__":
    main()
