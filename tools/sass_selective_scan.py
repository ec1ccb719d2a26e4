#!/usr/bin/env python
"""Instructions of the Mamba-1 selective scan's loops, compiled for sm_90a offline (no GPU).

Compiles the forward (without and with the stored states) and the backward of
``bsmamba2/ops/triton/selective.py`` at the paper's time axis (310 × 801 steps, d_inner
1024, d_state 16, dt_rank 16) with the model's channel-last strides and the launch
settings the GPU uses, then prints ptxas's registers and spill bytes and the SASS of each
kernel's longest loop (one chunk of ``CHUNK`` steps per thread) by opcode. The kernels are
issue-bound (docs/benchmarks.md), so the loop's count is the first check of a change.

Run it with the GPU machine's Triton (3.6; register allocation and code differ between
versions), e.g. ``pip install --target /tmp/t36 triton==3.6.0`` then
``PYTHONPATH=/tmp/t36:. python tools/sass_selective_scan.py``. ``--bc fp32`` compiles B and
C as fp32 (batch, length, 2, n) rows instead of the model's bf16 slices of x_proj's output
(fewer instructions, but slower on the H200: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from bsmamba2.ops.triton import selective

BATCH, LENGTH, D, N, RANK = 310, 801, 1024, 16, 16
FP32_POINTERS = {"A_ptr", "D_ptr", "bias_ptr", "h0_ptr", "final_ptr", "dfin_ptr",
                 "dBC_ptr", "dA_ptr", "dD_ptr", "dbias_ptr", "dh0_ptr"}
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def _ints(bc: str, backward: bool) -> dict:
    """The kernels' integer arguments at the paper's time axis, as the model calls them: u,
    Δ, z and the outputs channel-last, B and C slices of x_proj's (batch, length, rank + 2n)
    output (or, ``bc`` fp32, of a (batch, length, 2, n) tensor)."""
    nc = triton.cdiv(LENGTH, selective.CHUNK)
    width = 2 * N if bc == "fp32" else RANK + 2 * N
    row = dict(sBb=LENGTH * width, sBg=N, sBn=1, sBl=width)  # sBg: unsqueeze(1) of one group
    ints = dict(L=LENGTH, N=N, DG=D, G=1, NC=nc, sxn=1, sAd=N, sAn=1, ssb=(nc - 1) * N * D, ssc=N * D,
                ssn=D, ssd=1, **row, **{k.replace("B", "C"): v for k, v in row.items()})
    last = ["u", "d", "z"] + (["y", "gu", "gd", "gz"] if backward else ["o"])
    for name in last:  # (batch, d, length) views of channel-last tensors
        ints.update({f"s{name}b": LENGTH * D, f"s{name}d": 1, f"s{name}l": D})
    return ints


def compile_kernel(kernel, constexprs: dict, bc: str, num_warps: int, maxnreg: int | None = None):
    """(ptxas's register/spill line, SASS) of one variant, specialised as Triton's launcher
    would: integers equal to 1 become constants, multiples of 16 and pointers get
    divisibility hints, except the arguments the kernel does not specialise."""
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    unspecialised = {fn.arg_names[i] if isinstance(i, int) else i for i in fn.do_not_specialize}
    ints = _ints(bc, "dout_ptr" in fn.arg_names)
    signature, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            fp32 = name in FP32_POINTERS or (bc == "fp32" and name in ("B_ptr", "C_ptr"))
            signature[name] = "*fp32" if fp32 else "*bf16"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name not in unspecialised and ints[name] == 1:
            signature[name], consts[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if name not in unspecialised and ints[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=fn, signature=signature, attrs=attrs,
                       constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    options = {"num_warps": num_warps, "num_stages": 1, **({"maxnreg": maxnreg} if maxnreg else {})}
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(compiled.asm["ptx"])
        (Path(tmp) / "k.cubin").write_bytes(compiled.asm["cubin"])
        cap = ["-maxrregcount", str(maxnreg)] if maxnreg else []
        ptxas = subprocess.run([BIN / "ptxas", "-v", "-arch=sm_90a", *cap, f"{tmp}/k.ptx", "-o", "/dev/null"],
                               capture_output=True, text=True).stderr
        sass = subprocess.run([BIN / "cuobjdump", "-sass", f"{tmp}/k.cubin"], capture_output=True,
                              text=True).stdout
    regs = re.search(r"Used (\d+) registers", ptxas)
    spills = re.search(r"(\d+) bytes spill stores", ptxas)
    return f"{regs.group(1) if regs else '?'} registers, {spills.group(1) if spills else '?'} B spilled", sass


def longest_loop(sass: str) -> collections.Counter:
    """Opcodes of the longest backward branch's body: the chunk loop."""
    code = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]
    address = [int(re.match(r"\s+/\*([0-9a-f]+)\*/", line).group(1), 16) for line in code]
    best = collections.Counter()
    for i, line in enumerate(code):
        target = re.search(r"\bBRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", line)
        if target and int(target.group(1), 16) < address[i] and int(target.group(1), 16) in address:
            body = code[address.index(int(target.group(1), 16)):i + 1]
            if len(body) > sum(best.values()):
                best = collections.Counter(
                    re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", op).group(1) for op in body)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bc", choices=("bf16", "fp32"), default="bf16", help="B and C's dtype")
    parser.add_argument("--rough", type=int, default=selective.ROUGH_16BIT,
                        help="the forward's ROUGH (0: gate and softplus as for fp32)")
    args = parser.parse_args()
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_H0=False, EVEN_N=True,
                 K=selective.CHUNK, BLOCK_N=N)
    bwd = selective._bwd_config(N)
    variants = [
        (f"_fwd{' states' if states else ''}", selective._fwd,
         {**flags, "STORE_STATES": states, "STORE_FINAL": False, "ROUGH": args.rough, "BLOCK_D": 128}, 4)
        for states in (False, True)]
    lanes = min(bwd["BLOCK_D"], 32)
    variants.append(("_bwd", selective._bwd, {**flags, "HAS_DFIN": False, "LANES": lanes, "SUB": bwd["SUB"],
                                              "BLOCK_D": bwd["BLOCK_D"]}, bwd["num_warps"]))
    print(f"triton {triton.__version__}, sm_90a, time axis ({BATCH} × {LENGTH}), B/C {args.bc}, "
          f"ROUGH {args.rough}; "
          f"SASS per thread and {selective.CHUNK}-step chunk")
    for name, kernel, constexprs, warps in variants:
        line, sass = compile_kernel(kernel, constexprs, args.bc, warps)
        loop = longest_loop(sass)
        top = ", ".join(f"{op} {count}" for op, count in loop.most_common(12))
        print(f"{name:<11} {line}: loop {sum(loop.values())} ({top})", flush=True)


if __name__ == "__main__":
    main()
