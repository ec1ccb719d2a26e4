#!/usr/bin/env python
"""Registers and spills of the SSD kernels per autotune config, compiled for sm_90a offline.

No GPU needed: Triton compiles each kernel variant (paper shapes: headdim 64, d_state 128,
bf16, chunk 64 — 32 for the forward's output pass) to PTX for an H100, and its bundled
``ptxas -v`` reports registers and spill bytes. Spills are what made the fused backward slow
(docs/benchmarks.md), so check them before spending GPU time on a kernel change.
Register allocation differs between Triton versions: run it with the GPU machine's (3.6).

Example: ``python tools/triton_spills.py`` (a minute or two; prints one line per variant).
"""

from __future__ import annotations

import subprocess
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia import compiler as nvidia
from triton.compiler import ASTSource

from bsmamba2.ops.triton import ssd

FP32_POINTERS = {"A_ptr", "D_ptr", "bias_ptr", "h0_ptr", "hout_ptr", "dh0_ptr", "dfin_ptr", "ddt_ptr",
                 "dA_ptr", "dD_ptr", "dbias_ptr"}
PAPER = {"HAS_D": True, "HAS_BIAS": True, "SOFTPLUS": True, "BLOCK_P": 64, "BLOCK_N": 128,
         "DOT": tl.bfloat16, "PREC": "tf32"}


def _ptxas() -> str:
    try:
        return nvidia.get_ptxas(90).path  # newer Triton: per architecture
    except TypeError:
        return nvidia.get_ptxas().path


def report(kernel, constexprs: dict, num_warps: int, num_stages: int) -> str:
    """ptxas's register / spill line for one variant of an autotuned kernel."""
    fn = kernel.fn  # the JITFunction under the autotuner
    constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
    signature = {
        name: "constexpr" if name in constexprs
        else ("*fp32" if name in FP32_POINTERS else "*bf16") if name.endswith("_ptr")
        else "i32"
        for name in fn.arg_names
    }
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
        ptx.write(compiled.asm["ptx"])
        ptx.flush()
        result = subprocess.run([_ptxas(), "-v", "-arch=sm_90a", ptx.name, "-o", "/dev/null"],
                                capture_output=True, text=True)
    lines = [line.split("info    :")[-1].strip() for line in result.stderr.splitlines()
             if "registers" in line or "spill" in line]
    return " | ".join(lines) or result.stderr.strip()[-300:]


def main() -> None:
    print(f"triton {triton.__version__}, sm_90a, paper shapes, bf16")
    variants = [("_chunked_fwd output pass", ssd._chunked_fwd,
                 {"HAS_H0": False, "STORE_FINAL": False, "STORE_STATES": False, "COMPUTE_Y": True,
                  "BLOCK_Q": ssd.FWD_CHUNK}),
                ("_chunked_fwd states pass", ssd._chunked_fwd,
                 {"HAS_H0": False, "STORE_FINAL": False, "STORE_STATES": True, "COMPUTE_Y": False,
                  "BLOCK_Q": ssd.CHUNK}),
                ("_state_grads", ssd._state_grads,
                 {"HAS_DFIN": False, "HAS_H0": False, "BLOCK_Q": ssd.CHUNK}),
                ("_short_fwd", ssd._short_fwd, {"BLOCK_Q": 64})]
    variants += [(f"_chunk_bwd part {part}{' states' if states else ''}", ssd._chunk_bwd,
                  {"HAS_STATES": states, "PART": part, "BLOCK_Q": ssd.CHUNK})
                 for part in (ssd.PART_DX.value, ssd.PART_DB.value, ssd.PART_DC.value)
                 for states in (True, False)]
    for name, kernel, constexprs in variants:
        for config in kernel.configs:
            line = report(kernel, {**PAPER, **constexprs}, config.num_warps, config.num_stages)
            print(f"{name:<30} warps {config.num_warps} stages {config.num_stages}: {line}", flush=True)


if __name__ == "__main__":
    main()
