#!/usr/bin/env python
"""Registers, spills and shared memory of the SSD and Mamba-3 kernels per autotune config,
compiled for sm_90a offline.

No GPU needed: Triton compiles each kernel variant (paper shapes: headdim 64, d_state 128,
bf16, chunk 64 — 32 for the forward's output pass) to PTX for an H100, and its bundled
``ptxas -v`` reports registers and spill bytes. Spills are what made the fused backward slow
(docs/benchmarks.md), so check them before spending GPU time on a kernel change.
Register allocation differs between Triton versions: run it with the GPU machine's (3.6).
The integer arguments are those of the paper's model layout (:func:`ssd_ints`), specialised as
the JIT specialises them at a launch: the loads are the vector loads and asynchronous copies
of the kernel that runs (unspecialised, every load is a scalar one and the spills several times
larger: the counts in docs/benchmarks.md before 2026-12-03 15:30 UTC were made so).

Shared memory over the H100/H200's 227 KB per block (:data:`SHARED_LIMIT`) is a launch error
on the GPU: the Mamba-3 backward with 64-row fp32 chunks needed 240 KB (docs/benchmarks.md).

Example: ``python tools/triton_spills.py`` (a minute or two; prints one line per variant);
``python tools/triton_spills.py mamba3`` for the Mamba-3 kernels (several minutes).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia import compiler as nvidia
from triton.compiler import ASTSource

from bsmamba2.ops.triton import mamba3, ssd

FP32_POINTERS = {"A_ptr", "D_ptr", "bias_ptr", "h0_ptr", "hout_ptr", "dh0_ptr", "dfin_ptr", "ddt_ptr",
                 "dA_ptr", "dD_ptr", "dbias_ptr"}
SHARED_LIMIT = 232_448
"""Bytes of shared memory one block may use on an H100 or H200."""
MAMBA3_FP32_POINTERS = {
    "adt_ptr", "w_ptr", "g_ptr", "qb_ptr", "kb_ptr", "phi_ptr", "D_ptr", "mx_ptr", "mz_ptr", "mo_ptr",
    "states_ptr", "dstates_ptr", "st_ptr", "dd_ptr", "ddq_ptr", "ddk_ptr", "dq_ptr", "dk_ptr",
    "dx_ptr", "dz_ptr", "dadt_ptr", "dw_ptr", "dg_ptr",
    "dphi_ptr", "part_ptr", "dbias_ptr", "dt_ptr",
}
PAPER = {"HAS_D": True, "HAS_BIAS": True, "SOFTPLUS": True, "BLOCK_P": 64, "BLOCK_N": 128,
         "DOT": tl.bfloat16, "PREC": "tf32"}


def _ptxas() -> str:
    try:
        return nvidia.get_ptxas(90).path  # newer Triton: per architecture
    except TypeError:
        return nvidia.get_ptxas().path


def ssd_ints(seqs: int = 310, length: int = 801) -> dict[str, int]:
    """The integer arguments of the SSD kernels at the paper's sizes (16 heads × 64, one
    group, state 128) in the model's layout: x, B, C adjacent slices of one (seqs, length,
    1280) tensor, as the benchmark and the model pass them, and the gradients in one buffer."""
    h, p, n = 16, 64, 128
    row = h * p + 2 * n
    strides = {"x": (length * row, row, p, 1), "d": (length * h, h, 1), "B": (length * row, row, n, 1),
               "C": (length * row, row, n, 1), "y": (length * h * p, h * p, p, 1)}
    axes = {"x": "blhp", "d": "blh", "B": "blgn", "C": "blgn", "y": "blhp"}
    ints = {f"s{k}{axis}": v for k, vs in strides.items() for axis, v in zip(axes[k], vs, strict=True)}
    return {**ints, "sgxb": length * row, "sgxl": row, "sgBb": length * row, "sgBl": row,
            "L": length, "H": h, "HG": h, "P": p, "N": n, "NC": -(-length // 64), "G": 1}


def mamba3_fwd_ints(seqs: int = 310, length: int = 801, steps: int = 32,
                    gates: bool = True) -> dict[str, int]:
    """The integer arguments of the Mamba-3 forward (``_fwd``) at the paper's sizes (16 heads ×
    64, one group, state 128, 32 angles) in the layer's layout: x, z and θ slices of in_proj's
    (seqs, length, 2384) output, θ shared by the heads (head stride 0); with ``gates`` (the output
    pass in inference) A·Δ and Δ (b, l, h) tensors seen as (b, h, l) and the trapezoid gate a
    slice of in_proj's output, else (the states pass) A·Δ, Δ, ω, γ (b, h, l) contiguous."""
    row = 2 * 16 * 64 + 2 * 128 + 3 * 16 + 32
    h = 16
    if gates:
        per_step = {"svb": length * h, "svh": 1, "svl": h, "swb": length * row, "swh": 1, "swl": row}
    else:
        per_step = {"svb": length * h, "svh": length, "svl": 1, "swb": length * h, "swh": length, "swl": 1}
    return {"L": length, "H": h, "G": 1, "S": 32, "NC": -(-length // steps), "sxb": length * row, "sxl": row,
            "szb": length * row, "szl": row, "sab": length * row, "sal": row, "sah": 0, "sas": 1, **per_step}


def turn_back_ints(seqs: int = 310, length: int = 801, steps: int = 16) -> dict[str, int]:
    """The integer arguments of ``_turn_back`` at the paper's sizes (16 heads of one group, 32
    angles), as the backward launches it."""
    return {"L": length, "H": 16, "G": 1, "S": 32, "NB": -(-length // steps)}


def report(kernel, constexprs: dict, num_warps: int, num_stages: int,
           fp32_pointers: set[str] = FP32_POINTERS, data: str = "*bf16", ints: dict | None = None) -> str:
    """ptxas's register / spill line and the shared memory of one variant of an autotuned
    kernel; ``fp32_pointers`` point to float32 tensors, the other pointers to ``data``.

    ``ints``: the values of the integer arguments, specialised as Triton's JIT does at a
    launch (1 becomes a constant, multiples of 16 and every pointer are marked divisible by
    16): without them the strides are unknown, every load is a scalar 2-byte load and none
    is pipelined, which is not the kernel that runs (the spill counts of such a compile are
    several times the real ones)."""
    fn = kernel.fn  # the JITFunction under the autotuner
    constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
    attrs = {}
    for index, name in enumerate(fn.arg_names):
        if ints is None or name in constexprs:
            continue
        if name.endswith("_ptr") or ints[name] % 16 == 0:
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif ints[name] == 1:
            constexprs[name] = 1
    signature = {
        name: "constexpr" if name in constexprs
        else ("*fp32" if name in fp32_pointers else data) if name.endswith("_ptr")
        else "i32"
        for name in fn.arg_names
    }
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()}, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
        ptx.write(compiled.asm["ptx"])
        ptx.flush()
        result = subprocess.run([_ptxas(), "-v", "-arch=sm_90a", ptx.name, "-o", "/dev/null"],
                                capture_output=True, text=True)
    lines = [line.split("info    :")[-1].strip() for line in result.stderr.splitlines()
             if "registers" in line or "spill" in line]
    shared = compiled.metadata.shared
    over = " OVER THE LIMIT" if shared > SHARED_LIMIT else ""
    return f"shared {shared} B{over} | " + (" | ".join(lines) or result.stderr.strip()[-300:])


def main_mamba3() -> None:
    """The Mamba-3 kernels at the paper's sizes (headdim 64, d_state 128), bf16 and fp32 inputs."""
    print(f"triton {triton.__version__}, sm_90a, Mamba-3 kernels, paper shapes")
    bf16, fp32 = ("bf16", torch.bfloat16, tl.bfloat16), ("fp32", torch.float32, tl.float32)
    # each case at its default chunk and (bf16) at half of it: 32-row backward chunks, the
    # `--mamba3-chunk` candidate (docs/benchmarks.md)
    for (data, dtype, dot), rank, half in ((bf16, 1, False), (bf16, 1, True), (bf16, 4, False),
                                           (bf16, 4, True), (fp32, 1, False)):
        steps = mamba3.chunk_steps(rank, dtype) // (2 if half else 1)
        base = {"P": 64, "N": 128, "BH": mamba3.half_block(128), "R": rank, "T": steps, "MIMO": rank > 1,
                "HAS_Z": True, "HAS_O": True, "PREC": "tf32"}
        with_dot = {"HAS_D": True, "DOT": dot}
        split = {"LOW": dot, "SPLIT": dtype != torch.float32}  # the dq̃/dk̃ products' split operands
        width, quarters = mamba3.rotation_parts(128, 32)
        fwd = {**with_dot, "Q": width, "SPLIT": quarters, "STORE_PHI": False, "HAS_STATES": True}
        out_pass = {"COMPUTE_Y": True, "FUSED": True, "GATES": True, "REVERSE": False, "STATE_DOT": dot,
                    "T": min(steps, mamba3.FWD_ROWS // rank)}
        qr, qu = mamba3.turn_back_parts(128, 32)
        turn_back = {"HG": 16, "T": mamba3.TURN_BACK_ROWS // rank, "QR": qr, "QU": max(qu, 1),
                     "HAS_U": qu > 0}
        for name, kernel, extra in (
                ("_fwd", mamba3._fwd, {**fwd, **out_pass}),
                ("_fwd states pass", mamba3._fwd, {**fwd, "COMPUTE_Y": False, "FUSED": False, "GATES": False,
                                                    "REVERSE": False, "STATE_DOT": tl.float32}),
                ("_state_grads", mamba3._state_grads, {}),
                ("_chunk_bwd_v states", mamba3._chunk_bwd_v, {**with_dot, "HAS_STATES": True}),
                ("_chunk_bwd_v", mamba3._chunk_bwd_v, {**with_dot, "HAS_STATES": False}),
                *((f"_chunk_bwd_qk part {part}", mamba3._chunk_bwd_qk,
                   {**with_dot, **split, "PART": part, "HAS_STATES": True})
                  for part in (mamba3.PART_DK.value, mamba3.PART_DQ.value)),
                ("_rotate", mamba3._rotate, {**split, "T": mamba3.TURN_ROWS // rank}),
                ("_turn_back", mamba3._turn_back, turn_back)):
            fp32_pointers, ints = MAMBA3_FP32_POINTERS, None
            if kernel is mamba3._turn_back:
                ints = turn_back_ints(steps=turn_back["T"])
            if kernel is mamba3._fwd:  # specialised as launched (θ in place, φ read by the states pass)
                ints = mamba3_fwd_ints(steps=extra.get("T", steps), gates=extra["GATES"])
                fp32_pointers = fp32_pointers | ({"ang_ptr"} if not extra["FUSED"] else set())
                fp32_pointers = fp32_pointers - ({"w_ptr"} if extra["GATES"] else set())  # the gate, bf16
            for config in kernel.configs:
                line = report(kernel, {**base, **extra}, config.num_warps, config.num_stages,
                              fp32_pointers, "*fp32" if data == "fp32" else "*bf16", ints=ints)
                t = extra.get("T", steps)
                print(f"{data} R={rank} T={t} {name:<22} warps {config.num_warps}: {line}", flush=True)


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
    # as SSDScan.backward launches them: dx one head per program with states (long sequences),
    # else the group's 16 heads (HEADS is a compile-time trip count)
    variants += [(f"_chunk_bwd part {part}{' states' if states else ''}", ssd._chunk_bwd,
                  {"HAS_STATES": states, "PART": part, "BLOCK_Q": ssd.CHUNK,
                   "HEADS": 1 if states and part == ssd.PART_DX.value else 16})
                 for part in (ssd.PART_DX.value, ssd.PART_DB.value, ssd.PART_DC.value)
                 for states in (True, False)]
    for name, kernel, constexprs in variants:
        # the band axis (4005 × 62) where the kernel runs on short sequences, else the time axis
        short = kernel is ssd._short_fwd or not constexprs.get("HAS_STATES", True)
        ints = ssd_ints(4005, 62) if short else ssd_ints()
        for config in kernel.configs:
            line = report(kernel, {**PAPER, **constexprs}, config.num_warps, config.num_stages, ints=ints)
            print(f"{name:<30} warps {config.num_warps} stages {config.num_stages}: {line}", flush=True)


if __name__ == "__main__":
    main_mamba3() if sys.argv[1:] == ["mamba3"] else main()
