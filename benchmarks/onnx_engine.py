"""ONNX Runtime against eager PyTorch on the CPU: do they score alike, and which is faster?

    python benchmarks/onnx_engine.py [--data ../shared/data/brickwork_crack] [--json OUT]

1. Agreement, for every method: a model trained briefly on the set's good images (a few steps: the
   check is of the engines, not of the model), exported, and both engines run through the whole
   pipeline on real test images (goods and defects).  Prints the largest difference of the image
   scores and of the heat maps, and whether any verdict differs.
2. Speed, for the default detector trained as the app trains it: ``bench-pipeline`` once on each
   engine in the same run — folder throughput and live 1280x720 frames per second.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from inspector.app.engine import load_detector  # noqa: E402
from inspector.app.jobs import TrainOptions, train_model  # noqa: E402
from inspector.app.pipeline_bench import LiveSettings, bench_pipeline  # noqa: E402
from inspector.detect.pipeline import Inspector  # noqa: E402
from inspector.frames.frame import Frame  # noqa: E402
from inspector.frames.images import read_image  # noqa: E402
from inspector.learn.datasets import list_images  # noqa: E402
from inspector.modelstore.modelfile import calibration_of, save_model  # noqa: E402
from inspector.modelstore.onnx_files import export_onnx  # noqa: E402

#: A few steps per method: enough to move every weight away from its initial value.
QUICK = {"epochs": 1, "steps_per_epoch": 5}


def inspect_with(detector, meta, images):
    inspector = Inspector(detector, calibration_of(meta), **meta.get("inspection", {}))
    frames = [Frame(img, str(i), i, time.monotonic()) for i, img in enumerate(images)]
    return inspector.inspect_batch(frames)


def agreement(data: Path, method: str, images: list[np.ndarray], tmp: Path) -> dict:
    quick = {} if models.get_method(method).gradient_free else QUICK
    trained = train_model(TrainOptions(data=data, method=method, device="cpu", **quick))
    model = save_model(tmp / f"{method}.safetensors", trained.detector, trained.metadata)
    t0 = time.perf_counter()
    graph = export_onnx(model, tmp / f"{method}.onnx")
    export_s = time.perf_counter() - t0
    torch_model, meta = load_detector(model, device="cpu", engine="torch")
    onnx_model, _ = load_detector(graph, device="cpu", engine="onnx")
    a, b = inspect_with(torch_model, meta, images), inspect_with(onnx_model, meta, images)
    errors = sum(r.error is not None for r in a + b)
    score = max(abs(x.score - y.score) for x, y in zip(a, b, strict=True))
    heat = max(float(np.abs(x.heat_scaled - y.heat_scaled).max()) for x, y in zip(a, b, strict=True))
    span = max(x.score for x in a) - min(x.score for x in a)
    return {"method": method, "images": len(images), "errors": errors, "export_s": round(export_s, 2),
            "graph_mb": round(graph.stat().st_size / 2**20, 2), "max_score_diff": score,
            "score_span": span, "max_heat_diff": heat,
            "verdicts_differ": sum(x.verdict != y.verdict for x, y in zip(a, b, strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "brickwork_crack")
    parser.add_argument("--live-seconds", type=float, default=15.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    files = list_images(args.data / "test" / "good")[:12] + list_images(args.data / "test" / "crack")[:12]
    images = [read_image(f) for f in files]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; data {args.data}")
    out = {"agreement": [], "speed": []}
    with tempfile.TemporaryDirectory() as tmp:
        for method in models.method_names():
            row = agreement(args.data, method, images, Path(tmp))
            out["agreement"].append(row)
            print(f"{method:14s} max |score diff| {row['max_score_diff']:.2e} (scores span {row['score_span']:.3g}) "
                  f"max |heat diff| {row['max_heat_diff']:.2e} verdicts differ {row['verdicts_differ']}/"
                  f"{row['images']} export {row['export_s']} s, {row['graph_mb']} MB")
        trained = train_model(TrainOptions(data=args.data, method="default", device="cpu"))
        model = save_model(Path(tmp) / "default.safetensors", trained.detector, trained.metadata)
        for engine in ("torch", "onnx"):
            r = bench_pipeline(model, args.data / "test", device="cpu", engine=engine,
                               live=LiveSettings(seconds=args.live_seconds))
            out["speed"].append(r)
            print(f"default detector, {engine:5s}: folder {r['folder_items_per_s']:.1f} items/s "
                  f"(decode alone {r['decode_only_items_per_s']:.1f}), live 1280x720 {r['live_fps']:.2f} frames/s, "
                  f"latency p50 {r['live_latency_p50_ms']:.0f} ms")
    t, o = out["speed"]
    print(f"speed-up of onnx over torch: folder {o['folder_items_per_s'] / t['folder_items_per_s']:.2f}x, "
          f"live {o['live_fps'] / t['live_fps']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
