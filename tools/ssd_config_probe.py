"""Run the chunked SSD kernels with one forced launch config and check them (GPU triage).

    python tools/ssd_config_probe.py fwd|bwd WARPS STAGES BLOCK_P
"""

import sys

import torch
import triton

from bsmamba2.ops import reference
from bsmamba2.ops.triton import ssd

which, warps, stages, block_p = sys.argv[1], *map(int, sys.argv[2:])
probe = triton.Config({"BLOCK_P": block_p}, num_warps=warps, num_stages=stages)
ssd._chunked_fwd.configs = [probe if which == "fwd" else triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=1)]
ssd._chunked_bwd.configs = [probe if which == "bwd" else triton.Config({"BLOCK_P": 32}, num_warps=8, num_stages=1)]
for dtype in (torch.bfloat16, torch.float32):
    torch.manual_seed(0)
    b, L, h, p, n = 3, 257, 16, 64, 128
    x = torch.randn(b, L, h, p, device="cuda", dtype=dtype, requires_grad=True)
    dt = (torch.randn(b, L, h, device="cuda", dtype=dtype) - 1).requires_grad_()
    A = (-torch.rand(h, device="cuda") * 7 - 1).requires_grad_()
    B = torch.randn(b, L, 1, n, device="cuda", dtype=dtype, requires_grad=True)
    C = torch.randn(b, L, 1, n, device="cuda", dtype=dtype, requires_grad=True)
    D = torch.randn(h, device="cuda", requires_grad=True)
    bias = (torch.randn(h, device="cuda") - 2).requires_grad_()
    ins = [x, dt, A, B, C, D, bias]
    try:
        y = ssd.ssd_scan(x, dt, A, B, C, D, dt_bias=bias, dt_softplus=True)
        gy = torch.randn_like(y)
        got = torch.autograd.grad(y, ins, gy)
        torch.cuda.synchronize()
    except Exception as exc:
        print(f"PROBE {which} w{warps} s{stages} P{block_p} {dtype}: FAIL {type(exc).__name__} {str(exc)[:90]}")
        if "illegal" in str(exc):
            break
        continue
    x64 = [t.detach().double().requires_grad_() for t in ins]
    y64 = reference.ssd_scan(*x64[:6], dt_bias=x64[6], dt_softplus=True)
    want = torch.autograd.grad(y64, x64, gy.double())
    errs = [((a.double() - w).norm() / w.norm()).item() for a, w in zip([y, *got], [y64, *want], strict=True)]
    print(f"PROBE {which} w{warps} s{stages} P{block_p} {dtype}: max rel err {max(errs):.1e}", flush=True)
