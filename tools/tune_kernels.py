#!/usr/bin/env python
"""Autotune our Triton kernels on the package's workloads and print the table of
:mod:`bsmamba2.ops.triton.tuned` for this GPU.

Runs, with ``BSMAMBA2_AUTOTUNE=1`` (every key autotuned, whatever the table says): the
separator's default segments (8 s, a batch of 16 and one of 1), one pass over 60 s, and a
training step (batch 5 × 8 s, forward and backward), in bf16 by default. Then every
autotuned kernel's pick per key is printed as the ``KNOWN_BEST`` entry of this GPU model
and written as JSON with ``--json``. Paste the entry into ``bsmamba2/ops/triton/tuned.py``.

``python tools/tune_kernels.py --json tuned_h200.json``
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path

import torch
import triton

from bsmamba2.model import BSMamba2, BSMamba2Config, stft
from bsmamba2.ops.triton.tuned import kernel_name

MODULES = ("ssd", "conv", "norm")
"""The modules of bsmamba2.ops.triton whose kernels launch through ``common.launch``."""


def picks() -> dict[str, dict[str, tuple]]:
    """kernel → table key → (num_warps, num_stages, meta) of every autotuned call so far."""
    table: dict[str, dict[str, tuple]] = {}
    for name in MODULES:
        module = importlib.import_module(f"bsmamba2.ops.triton.{name}")
        for obj in vars(module).values():
            if not isinstance(obj, triton.runtime.autotuner.Autotuner):
                continue
            for key, config in obj.cache.items():
                values, dtype = key[:len(obj.keys)], key[len(obj.keys)] if len(key) > len(obj.keys) else None
                spelled = ",".join(f"{k}={v}" for k, v in zip(obj.keys, values, strict=True)) + f"|{dtype}"
                table.setdefault(kernel_name(obj), {})[spelled] = (
                    config.num_warps, config.num_stages, dict(config.kwargs))
    return table


def entry(device: str, table: dict[str, dict[str, tuple]], note: str) -> str:
    """The ``KNOWN_BEST`` entry of ``device`` as Python source for tuned.py."""
    def q(text: str) -> str:
        return json.dumps(text)

    lines = [f"    # tools/tune_kernels.py, {note}", f"    {q(device)}: {{"]
    for kernel in sorted(table):
        lines.append(f"        {q(kernel)}: {{")
        for key in sorted(table[kernel]):
            warps, stages, meta = table[kernel][key]
            value = f"({warps}, {stages}, {{{', '.join(f'{q(k)}: {v}' for k, v in meta.items())}}}),"
            line = f"            {q(key)}: {value}"
            lines.append(line if len(line) <= 110 else f"            {q(key)}:\n                {value}")
        lines.append("        },")
    lines.append("    },")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bsmamba2.yaml", help="model config (YAML)")
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--json", type=Path, default=None, help="write the table here")
    args = parser.parse_args(argv)
    os.environ["BSMAMBA2_AUTOTUNE"] = "1"  # read at every launch: the table is not used here
    device = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.precision]
    cfg = BSMamba2Config.from_yaml(args.config)
    torch.manual_seed(0)
    model = BSMamba2(cfg).to(device)
    sr = cfg.sample_rate
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        with torch.inference_mode():
            for batch, seconds in ((16, 8.0), (1, 8.0), (1, 60.0)):
                model(stft(torch.randn(batch, cfg.channels, int(seconds * sr), device=device) * 0.1, cfg))
        out = model(stft(torch.randn(5, cfg.channels, 8 * sr, device=device) * 0.1, cfg))
        torch.view_as_real(out).float().square().mean().backward()
    torch.cuda.synchronize()
    table = picks()
    name = torch.cuda.get_device_name(device)
    note = f"triton {triton.__version__}, torch {torch.__version__}, {args.precision}"
    print(entry(name, table, note))
    if args.json:
        meta = {"device": name, "triton": triton.__version__, "torch": torch.__version__,
                "precision": args.precision}
        args.json.write_text(json.dumps({**meta, "table": table}, indent=1))


if __name__ == "__main__":
    main()
