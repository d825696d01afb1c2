"""Re-make the demo model shipped in resources/: EIDN trained on the synthetic demo surface.

    python tools/make_demo_model.py [--out resources/demo-eidn.safetensors]

Writes a temporary data set in the MVTec AD layout — 160x160 pixel crops of the demo's
defect-free surface (the demo's inspection tile) for training, and more crops with and without
painted defects for a test — trains EIDN on the goods with synthetic pseudo-anomalies (seeded: the same
file every time on the same torch version and CPU), prints the test AUROC, and records the
tiling the model was made for in the file, so the program inspects the demo at that tile size.
The threshold is calibrated on whole frames as they are inspected (the worst of 120 tiles): the
demo's good surface is one loop of 426 views, and the threshold is set just above the worst of
them (false-alarm rate 0 on the loop), then checked on the views half a step between them and on
frames with a defect in view.  A real line calibrates at a chosen rate on its own good frames.
The test defects are drawn by the same painters as the pseudo-anomalies: the AUROC says the
model works, not how it would do on real parts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspector.app.demo import SyntheticSurface  # noqa: E402
from inspector.app.jobs import TrainOptions, evaluate, train_model  # noqa: E402
from inspector.detect.pipeline import Inspector, calibrate_frames  # noqa: E402
from inspector.frames.frame import Frame  # noqa: E402
from inspector.modelstore.modelfile import save_model  # noqa: E402

TILE = 160
DEFAULT_OUT = REPO / "resources" / "demo-eidn.safetensors"


def crops(surface: SyntheticSurface, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    while len(out) < n:
        frame = surface.next_frame()
        for _ in range(4):
            y, x = rng.integers(0, frame.shape[0] - TILE), rng.integers(0, frame.shape[1] - TILE)
            out.append(frame[y:y + TILE, x:x + TILE])
        for _ in range(10):      # move on: neighbouring crops of one frame are much alike
            surface.next_frame()
    return out[:n]


def write_set(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    line = SyntheticSurface(seed=seed, defect_rate=0.0)   # the demo's own surface: its good parts
    good_train = crops(line, 600, rng)
    good_test = crops(line, 100, rng)
    defect_line = SyntheticSurface(seed=seed, defect_rate=1.0, speed=40)
    defect_test = []
    while len(defect_test) < 100:                # crops around a defect, whole in view
        frame = defect_line.next_frame()
        for x0, y0, x1, y1 in defect_line.defects_in_view():
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            x, y = cx - TILE // 2, cy - TILE // 2
            if 0 <= x <= frame.shape[1] - TILE and 0 <= y <= frame.shape[0] - TILE and x1 - x0 <= TILE:
                defect_test.append(frame[y:y + TILE, x:x + TILE])
                break
    for rel, images in (("train/good", good_train), ("test/good", good_test), ("test/defect", defect_test[:100])):
        (root / rel).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            cv2.imwrite(str(root / rel / f"{i:04d}.png"), img)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="inspector-demo-") as tmp:
        data = write_set(Path(tmp) / "demo")
        trained = train_model(TrainOptions(data=data, method="eidn", seed=0))
        metrics = evaluate(trained.inspector(), trained.split.evaluation, root=data)
    inspector = Inspector(trained.detector, trained.calibration, tile=TILE, stride=TILE // 2)
    calibration = calibrate_frames(inspector, good_loop(), false_alarm_rate=0.0)
    inspector = Inspector(trained.detector, calibration, tile=TILE, stride=TILE // 2)
    far = np.mean([inspector.inspect(Frame(f, "good", 0, 0.0)).verdict == "NG" for f in good_loop(shift=3)])
    recall = np.mean([inspector.inspect(Frame(f, "defect", 0, 0.0)).verdict == "NG" for f in frames_with_defects(200)])

    trained.metadata["training"]["data"] = "synthetic demo surface (resources/make_demo_model.py)"
    trained.metadata["calibration"] = calibration.to_dict()
    trained.metadata["metrics"] = {"tile_image_auroc": metrics["image_auroc"], "frame_false_alarm_rate": far,
                                   "frame_recall": recall}
    trained.metadata["inspection"] = {"tile": TILE, "stride": TILE // 2}
    save_model(args.out, trained.detector, trained.metadata)
    print(f"wrote {args.out}: tiles: image_auroc={metrics['image_auroc']:.4f}; frames: false_alarm_rate={far:.3f} "
          f"on views between the calibration views, recall={recall:.3f} on 200 frames with a defect")
    return 0


def good_loop(shift: int = 0) -> list[np.ndarray]:
    """Every view of the demo's defect-free surface, once round its loop (``shift`` pixels along)."""
    line = SyntheticSurface(seed=0, defect_rate=0.0)
    line.offset = shift
    return [line.next_frame() for _ in range(line.surface.shape[1] // line.speed)]


def frames_with_defects(n: int) -> list[np.ndarray]:
    """Frames of the demo line with at least one defect wholly in view."""
    line, out = SyntheticSurface(seed=0, defect_rate=0.04), []
    while len(out) < n:
        frame = line.next_frame()
        if any(x0 >= 0 and x1 <= frame.shape[1] for x0, _, x1, _ in line.defects_in_view()):
            out.append(frame)
    return out


if __name__ == "__main__":
    sys.exit(main())
