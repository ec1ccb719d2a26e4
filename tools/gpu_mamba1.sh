#!/usr/bin/env bash
# The Mamba-1 GPU measurements of docs/benchmarks.md in one command (about 5 minutes on an H200):
#   1. the selective-scan kernel tests at the paper's sizes and the Mamba-1 model tests (the
#      paper-size ones first, the rest at the end, if REST_TIMEOUT leaves them time);
#   2. benchmark_mamba_ssm.py, op level: the selective scan (time and band axes, d_inner 1024,
#      d_state 16, bf16, fwd and fwd+bwd) with our kernels, the PyTorch fallback and, when its
#      CUDA extension imports, mamba_ssm's selective_scan_fn; the per-kernel profile;
#   3. model level: Mamba-1 against Mamba-2 (training step batch 5 × 8 s, 60 s separation);
#   4. tools/sweep_selective_scan.py: the kernel's launch variants on the time axis.
# Usage: bash tools/gpu_mamba1.sh OUTDIR [MAMBA_SSM_PEER_DIR]   (the peer dir holds with_peer.py)
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-gpu-results}")
peer=${2:-}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=$(mktemp -d)  # cold: the first calls include compiling and autotuning

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
python -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'triton', triton.__version__)" | tee -a "$out/device.txt"

tests=(tests/ops/test_triton_selective_scan.py tests/model/test_mamba1.py)
# The paper-size checks first (the numbers below mean nothing without them), the rest last.
timeout "${PAPER_TIMEOUT:-75}" python -m pytest -q --tb=short -rf -p no:cacheprovider "${tests[@]}" \
    -k "801 or gpu" > "$out/tests_paper.txt" 2>&1 || echo "PAPER-SIZE TESTS FAILED OR TIMED OUT: see tests_paper.txt"
grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests_paper.txt" | tail -12

run=(python)
if [[ -n "$peer" ]]; then run=(env MAMBA_SSM_SRC="$peer/src/mamba_ssm" python "$peer/with_peer.py"); fi
timeout "${OP_TIMEOUT:-80}" "${run[@]}" benchmark_mamba_ssm.py --device cuda --dtype bf16 --levels op \
    --ops selective_scan --backends "${OP_BACKENDS:-triton,torch,mamba_ssm}" --profile \
    --json "$out/bench_ops.json" || echo "OP BENCHMARK FAILED"
timeout "${MODEL_TIMEOUT:-150}" python benchmark_mamba_ssm.py --device cuda --dtype bf16 --levels model \
    --backends triton --mixers mamba2,mamba --json "$out/bench_model.json" || echo "MODEL BENCHMARK FAILED"
timeout "${SWEEP_TIMEOUT:-60}" python tools/sweep_selective_scan.py --axes time --json "$out/sweep.json" \
    || echo "SWEEP FAILED OR TIMED OUT"
timeout "${REST_TIMEOUT:-25}" python -m pytest -q --tb=short -rf -p no:cacheprovider "${tests[@]}" \
    -k "not (801 or gpu)" > "$out/tests_rest.txt" 2>&1 || echo "OTHER TESTS FAILED OR TIMED OUT: see tests_rest.txt"
grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests_rest.txt" | tail -12
