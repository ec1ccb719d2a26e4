#!/bin/bash
# Session 22, call 1 (H100, cold Triton cache: the autotuner runs): does main's Mamba-2 training step
# (5 x 8 s, no recompute) fit the 80 GB card with the dx-part 2-warp prune? Device memory outside the
# allocator after one step; then the Mamba-1 model rows (separation ratio) on the same card.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tc
L=$OUT/log.txt
at() { local d=$1; shift; (cd $d && PYTHONPATH=$d:/tmp/site "$@"); }
M="python benchmark_mamba_ssm.py --device cuda --dtype bf16 --levels model --backends triton --quick"
{ date -u; nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; git log --oneline -1 2>/dev/null
  echo "== mamba2 (cold)"; at $PWD timeout 120 $M --mixers mamba2 --json $OUT/m2_cold.json | grep -E "^model "
  echo "== mamba2"; at $PWD timeout 75 $M --mixers mamba2 --json $OUT/m2_warm.json | grep -E "^model "
  at $PWD timeout 60 python .gpu/lmem.py main
  echo "== mamba2, mamba (Mamba-1)"; at $PWD timeout 150 $M --mixers mamba2,mamba --json $OUT/m2_m1.json | grep -E "^model "
  date -u; } >> $L 2>&1
cat $L
