#!/usr/bin/env bash
# The pipeline benchmark figures in the README ("The pipeline benchmark"): bench-pipeline on each
# shared set's test folder with an EIDN model trained on that set (trained first if missing), on
# 1280x720 JPEG mosaics of the brickwork test images, and the AE for the live comparison.
# The simulated camera offers 1000 frames/s so that the live figure is the pipeline's own rate.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data}
mkdir -p runs bench-results

model_for() {  # method set -> model file, trained with the product defaults if missing
    local model="runs/$1-$2.safetensors"
    [ -f "$model" ] || "$PY" main.py train --data "$DATA/$2" --method "$1" --out "$model" >&2
    echo "$model"
}

for set in brickwork_crack magnetic_tile casting_impeller; do
    "$PY" main.py bench-pipeline --model "$(model_for eidn $set)" --folder "$DATA/$set/test" --camera-fps 1000 \
        --json "bench-results/pipeline_eidn_$set.json" | tail -1
done

mosaics=$(mktemp -d)
trap 'rm -rf "$mosaics"' EXIT
"$PY" - "$DATA/brickwork_crack/test" "$mosaics" <<'PY'
import sys
from pathlib import Path

import cv2

from inspector.learn.datasets import list_images
from inspector.app.pipeline_bench import mosaic_frames

for i, frame in enumerate(mosaic_frames(list_images(Path(sys.argv[1])), 227, count=200)):
    cv2.imwrite(str(Path(sys.argv[2]) / f"{i:04d}.jpg"), frame)
PY
"$PY" main.py bench-pipeline --model "$(model_for eidn brickwork_crack)" --folder "$mosaics" --camera-fps 1000 \
    --json bench-results/pipeline_eidn_mosaics_1280x720.json | tail -1
"$PY" main.py bench-pipeline --model "$(model_for ae brickwork_crack)" --folder "$DATA/brickwork_crack/test" \
    --camera-fps 1000 --json bench-results/pipeline_ae_brickwork_crack.json | tail -1
"$PY" main.py bench-pipeline --model "$(model_for eidn brickwork_crack)" --folder "$DATA/brickwork_crack/test" \
    --camera-fps 1000 --live-stride 80 --json bench-results/pipeline_eidn_brickwork_crack_stride80.json | tail -1
