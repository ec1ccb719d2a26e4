#!/bin/bash
# CPU A/B: base (1b27836) vs new (main) — eager passes alternated, the new cold compile, then 3-min songs cold/warm.
# base: `git worktree add /tmp/base 1b27836` first; run from anywhere, on a quiet machine (~45 min).
source /work/main/.venv/bin/activate
R=/work/main/docs/results/cpu_compile_ops_2026-12-06
L=$R/log.txt
run() { local tree=$1; shift; (cd $tree && PYTHONPATH=$tree "$@"); }
{
date -u; uptime; git -C /work/main log --oneline -1
for i in 1 2; do for t in base:/tmp/base new:/work/main; do n=${t%%:*}; d=${t#*:}
  echo "== $n bench_model eager ($i)"; run $d python tools/bench_model.py --seconds 8 --precisions bf16 --repeats 2 --json $R/model_eager_${n}_$i.json | tail -1
done; done
rm -rf /tmp/icab; echo "== new bench_model --compile cold"; run /work/main env TORCHINDUCTOR_CACHE_DIR=/tmp/icab python tools/bench_model.py --seconds 8 --precisions bf16 --repeats 2 --compile --json $R/model_compile_cold_new.json | tail -1
echo "   kernel files: $(find /tmp/icab -name '*.cpp' | wc -l)"
for n in new base; do d=/work/main; [ $n = base ] && d=/tmp/base
  C=$(mktemp -d); echo "== $n separate 3 min, cold cache"; uptime
  run $d env BSMAMBA2_CACHE=$C python tools/bench_separate.py --config configs/bsmamba2.yaml --minutes 3 --precision auto --compile auto --json $R/separate_3min_cold_$n.json 2>&1 | tail -3
  echo "== $n separate 3 min, warm cache"; uptime
  run $d env BSMAMBA2_CACHE=$C python tools/bench_separate.py --config configs/bsmamba2.yaml --minutes 3 --precision auto --compile auto --json $R/separate_3min_warm_$n.json 2>&1 | tail -3
done
date -u; uptime
} >> $L 2>&1
