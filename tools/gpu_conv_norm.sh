#!/usr/bin/env bash
# Check and time the Triton causal conv1d and gated RMSNorm kernels on a CUDA GPU, in one go:
#   1. their tests at the real sizes (tests/ops/test_triton_conv_norm.py runs on CUDA when it can);
#   2. fwd and fwd+bwd at the paper's time-axis shapes in the model's layout (x and z strided
#      slices of in_proj's output, row stride 2320), with the autotuned configs, next to the
#      bytes each must move and the card's copy bandwidth;
#   3. the op level of benchmark_mamba_ssm.py (Triton backend, paper shapes, bf16).
# Usage, from anywhere: bash tools/gpu_conv_norm.sh   (about 2-3 minutes on an H100)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python -m pytest -q -x tests/ops/test_triton_conv_norm.py

python - <<'EOF'
import torch
from triton.testing import do_bench

from bsmamba2.ops.triton import conv, norm

dev, bf16 = "cuda", torch.bfloat16
seqs, length, d_inner, ch, row = 5 * 62, 801, 1024, 1280, 2320
src = torch.empty(2**30, dtype=torch.uint8, device=dev)
dst = torch.empty_like(src)
copy_gbps = 2 * 2**30 / do_bench(lambda: dst.copy_(src), return_mode="median") / 1e6
del src, dst
print(f"device {torch.cuda.get_device_name()}, copy bandwidth {copy_gbps:.0f} GB/s")

packed = torch.randn(seqs, length, row, device=dev, dtype=bf16)


def bench(name, fn, leaves, out_bytes, elems, passes_fwd, passes_bwd):
    out = fn()
    dy = torch.randn_like(out)

    def step():
        y = fn()
        y.backward(dy)
        for t in leaves:
            t.grad = None

    for label, f, passes in (("fwd", fn, passes_fwd), ("fwd+bwd", step, passes_bwd)):
        ms = do_bench(f, return_mode="median")
        gb = passes * elems * out_bytes / 1e9
        print(f"{name:<16} {label:<8} {ms:7.3f} ms   {gb / ms * 1e3:6.0f} GB/s"
              f"   (floor at copy bandwidth {gb / copy_gbps * 1e3:.3f} ms)")


x = packed[..., d_inner:d_inner + ch].detach().requires_grad_()  # the x|B|C slice
w = torch.randn(ch, 4, device=dev, requires_grad=True)
b = torch.randn(ch, device=dev, requires_grad=True)
bench("causal_conv1d", lambda: conv.causal_conv1d(x, w, b, "silu"), [x, w, b], 2, x.numel(), 2, 5)
print("  configs: fwd", conv._conv_fwd.best_config, "| bwd", conv._conv_bwd.best_config)

z = packed[..., :d_inner].detach().requires_grad_()  # the gate slice
y = torch.randn(seqs, length, d_inner, device=dev, dtype=bf16, requires_grad=True)
wn = (torch.rand(d_inner, device=dev) + 0.5).requires_grad_()
bench("gated_rms_norm", lambda: norm.gated_rms_norm(y, z, wn, 1e-5, None), [y, z, wn], 2, y.numel(), 3, 8)
print("  configs: fwd", norm._norm_fwd.best_config, "| bwd", norm._norm_bwd.best_config)
EOF

python benchmark_mamba_ssm.py --device cuda --dtype bf16 --shapes paper --levels op --backends triton \
    --quick --json /tmp/benchmark_conv_norm.json
