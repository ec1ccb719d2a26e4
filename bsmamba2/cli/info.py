"""``bsmamba2 info``: versions, devices and the active kernel backend, for bug reports."""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from bsmamba2 import ops
from bsmamba2._version import __version__
from bsmamba2.device import CPU_BF16_VARIABLE, cpu_has_fast_bf16, resolve_device
from bsmamba2.model.config import BSMamba2Config
from bsmamba2.model.mixers import MIXERS
from bsmamba2.ops.cpu import selective as cpu_selective
from bsmamba2.separation.compiling import compile_cache_dir, cpp_compiler


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def report() -> list[tuple[str, str]]:
    """(label, value) rows describing this installation."""
    rows = [
        ("bsmamba2", __version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("torch", torch.__version__),
        ("triton", _triton_version()),
        ("cpu", f"{platform.machine()}, {torch.get_num_threads()} threads"),
    ]
    for i in range(torch.cuda.device_count()):
        prop = torch.cuda.get_device_properties(i)
        rows.append((f"cuda:{i}", f"{prop.name}, {prop.total_memory / 2**30:.1f} GiB"))
    if not torch.cuda.is_available():
        rows.append(("cuda", "not available"))
    rows.append(("mixers", f"{', '.join(MIXERS)} (config key `mixer`, default {BSMamba2Config.mixer})"))
    rows.append(("--device auto", str(resolve_device("auto"))))
    cpu_precision = (f"bf16 (bf16 instructions or ${CPU_BF16_VARIABLE}=1)" if cpu_has_fast_bf16()
                     else f"fp32 (no AVX-512 BF16 or AMX, or ${CPU_BF16_VARIABLE}=0)")
    rows.append(("--precision auto (CPU)", cpu_precision))
    rows.append(("BSMAMBA2_KERNELS", ops.requested_backend()))
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    for dev in devices:
        try:
            backend = ops.active_backend(dev)
        except RuntimeError as exc:
            backend = f"unavailable ({exc})"
        rows.append((f"kernels on {dev}", backend))
    rows.append(("Mamba-1 scan, CPU inference", cpu_selective.describe()))
    compiler = cpp_compiler()
    rows.append(("torch.compile (CPU)", f"C++ compiler {compiler}: `separate --compile auto` can use it"
                 if compiler else "no C++ compiler ($CXX or g++): separation stays eager"))
    rows.append(("compile cache", str(compile_cache_dir())))
    return rows


def run(args: argparse.Namespace) -> int:
    rows = report()
    if args.json:
        print(json.dumps(dict(rows)))
        return 0
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("info", help=summary)
    parser.add_argument("--json", action="store_true", help="one JSON object (label: value) instead of lines")
    parser.set_defaults(func=run)
