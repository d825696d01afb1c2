#!/usr/bin/env bash
# The ablation in the README (the papers' Table 5 on our data), on the smallest set: AGAD with and
# without the contextual adversarial term, with the eq. 3 anomaly term, and with the reconstruction
# fed back detached; EDE with one path and
# with two paths but no adversarial phase (the full schemes are the results table's rows).
# Usage: benchmarks/run_ablation.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
set=brickwork_crack
mkdir -p bench-results

bench() {  # tag method G [bench options...]
    local tag=ablation_$1_${set}_g$3 method=$2 g=$3
    shift 3
    echo "== $tag"
    .venv/bin/python main.py bench --data "$data/$set" --method "$method" --anomaly-fraction "$g" \
        --json "bench-results/$tag.json" "$@" 2> "bench-results/$tag.log" | tail -n 1
}

# AGAD's variants against the paper's scheme (naive generator, contextual term on), not today's defaults
paper=(--set generator=naive --set contextual_adversarial=true)
bench agad_no_contextual agad 0 --set generator=naive --set contextual_adversarial=false
bench agad_no_contextual agad 0.05 --set generator=naive --set contextual_adversarial=false
bench agad_fail_anomaly_reconstruction agad 0.05 "${paper[@]}" --set fail_anomaly_reconstruction=true
bench agad_detach_reconstruction agad 0 "${paper[@]}" --set detach_reconstruction=true
bench agad_detach_reconstruction agad 0.05 "${paper[@]}" --set detach_reconstruction=true
bench ede_one_path ede 0 --set paths=1
bench ede_two_paths_no_adversarial ede 0 --set adversarial=false
