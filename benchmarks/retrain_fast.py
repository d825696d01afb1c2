"""The retraining wizard's service on a shared set, timed: Train clicked to a recorded, activated version.

    python benchmarks/retrain_fast.py SET [METHOD] [PRESET] [N_GOODS]     e.g. brickwork_crack patchcore fast 300

Takes up to N_GOODS good images of SET/train/good and the labelled pool SET/train/defect as the
operator's samples, runs ``retrain`` (a fifth of the goods and half of the defects held out for
validation; the memory bank's surface chosen with the other half) and ``register`` into a temporary
registry, and prints the seconds, the validation figures and the surface.  test/ is never read.
"""

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspector.app.retrain import Samples, register, retrain  # noqa: E402
from inspector.app.surfaces import describe_choice  # noqa: E402
from inspector.learn.datasets import list_images  # noqa: E402
from inspector.modelstore.registry import Registry  # noqa: E402


def main() -> None:
    name = sys.argv[1]
    method = sys.argv[2] if len(sys.argv) > 2 else "patchcore"
    preset = sys.argv[3] if len(sys.argv) > 3 else "fast"
    n_goods = int(sys.argv[4]) if len(sys.argv) > 4 else 300
    root = REPO.parent / "shared" / "data" / name
    samples = Samples(list_images(root / "train" / "good")[:n_goods], list_images(root / "train" / "defect"))
    t0 = time.perf_counter()
    result = retrain(samples, method=method, preset=preset)
    with tempfile.TemporaryDirectory() as tmp:
        version = register(result, Registry(Path(tmp)), activate=True)
        seconds = time.perf_counter() - t0
    f = result.validation.figures()
    print(f"{name} {method} {preset}: {len(samples.goods)} goods, {len(samples.defects)} defects -> {version.id} "
          f"active in {seconds:.0f} s; validation on {f['n_validation_good']} goods / {f['n_validation_defect']} "
          f"defects: AUROC {f['image_auroc']:.3f}, false alarms {f['false_alarm_rate']:.3f}, recall {f['recall']:.3f}")
    print(describe_choice(result.trained.metadata["training"]) or "")


if __name__ == "__main__":
    main()
