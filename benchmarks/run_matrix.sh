#!/usr/bin/env bash
# Re-run the README's results table: every method on every set in ../shared/data, at G = 0 and
# G = 0.05, one bench run at a time (each prints its figures; JSON lands in bench-results/).
# The AE learns from good images only, so its G = 0.05 run would repeat its G = 0 run exactly.
# Usage: [METHODS="agad ede"] benchmarks/run_matrix.sh [DATA_DIR] [extra bench options...]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
shift || true
mkdir -p bench-results
methods=${METHODS:-$(.venv/bin/python -c "import models; print(' '.join(models.method_names()))")}
for method in $methods; do
  uses=$(.venv/bin/python -c "import models; print(int(models.get_method('$method').uses_anomalies))")
  fractions="0"; [ "$uses" = 1 ] && fractions="0 0.05"
  for dataset in "$data"/*/; do
    dataset=$(basename "$dataset")
    for g in $fractions; do
      tag=${method}_${dataset}_g${g}
      echo "== $tag"
      .venv/bin/python main.py bench --data "$data/$dataset" --method "$method" --anomaly-fraction "$g" \
        --json "bench-results/$tag.json" "$@" 2> "bench-results/$tag.log" | tail -n 1
    done
  done
done
.venv/bin/python benchmarks/results_table.py bench-results/{ae,agad,ede,eidn}_*.json
