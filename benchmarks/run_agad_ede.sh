#!/usr/bin/env bash
# The AGAD and EDE rows of the README's results table and their ablation (the papers' Table 5 on our
# data): one bench run at a time, JSON in bench-results/, each run's log beside it.
# Usage: benchmarks/run_agad_ede.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
mkdir -p bench-results

bench() {  # tag set method G [bench options...]
    local tag=$1 set=$2 method=$3 g=$4
    shift 4
    echo "== $tag"
    .venv/bin/python main.py bench --data "$data/$set" --method "$method" --anomaly-fraction "$g" \
        --json "bench-results/$tag.json" "$@" 2> "bench-results/$tag.log" | tail -n 1
}

for set in brickwork_crack casting_impeller magnetic_tile; do
    bench "agad_${set}_g0" "$set" agad 0
    bench "agad_${set}_g0.05" "$set" agad 0.05
    bench "ede_${set}_g0" "$set" ede 0
done

# Ablation on the smallest set.
bench ablation_agad_no_contextual_brickwork_crack_g0.05 brickwork_crack agad 0.05 --set contextual_adversarial=false
bench ablation_agad_fail_anomaly_reconstruction_brickwork_crack_g0.05 brickwork_crack agad 0.05 \
    --set fail_anomaly_reconstruction=true
bench ablation_agad_no_contextual_brickwork_crack_g0 brickwork_crack agad 0 --set contextual_adversarial=false
bench ablation_ede_one_path_brickwork_crack_g0 brickwork_crack ede 0 --set paths=1
bench ablation_ede_two_paths_no_adversarial_brickwork_crack_g0 brickwork_crack ede 0 --set adversarial=false
