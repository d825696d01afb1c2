"""Choosing the memory bank's settings on a validation split cut from train/ (test/ is never read).

    python benchmarks/patchcore_validation.py SET SCALE [STAGES]      e.g. magnetic_tile 0.5 3,6

Fits a bank on up to 300 of the split's training goods (features computed once), then prints the
validation image AUROC for each bank size and map smoothing.  Seed 0, one split: indicative (one
seed moves by about 0.02 here); ``bench --seeds`` measures the settings chosen.
"""

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from inspector.detect.scoring import whole_images  # noqa: E402
from inspector.learn.backbones import pretrained_backbone  # noqa: E402
from inspector.learn.datasets import detect_channels, discover, load_images  # noqa: E402
from inspector.learn.metrics import auroc  # noqa: E402
from inspector.learn.splits import make_split  # noqa: E402
from models.patchcore import greedy_coreset, nearest_distance  # noqa: E402

POOL = 50_000
BANKS = (1000, 2048)
SIGMAS = (0.0, 1.0, 2.0, 4.0, 8.0)


def main() -> None:
    name, scale = sys.argv[1], float(sys.argv[2])
    stages = tuple(int(s) for s in sys.argv[3].split(",")) if len(sys.argv) > 3 else (3, 6)
    dataset = discover(REPO.parent / "shared" / "data" / name)
    split = make_split(dataset, anomaly_fraction=0.0, rng=np.random.default_rng(0), protocol="validation",
                       learns_from_defects=False)
    channels = detect_channels(dataset.train_good)
    detector = models.create("patchcore", channels=channels, stages=stages)
    features = detector.patch_features
    features.backbone.load_weights(pretrained_backbone(features.backbone.name, stages).state_dict())
    features.align()
    t0 = time.perf_counter()
    train = whole_images(detector, detector.features,
                         load_images(split.train_good[:300], scale=scale, channels=channels).images)
    seconds = time.perf_counter() - t0
    held = whole_images(detector, detector.features,
                        load_images([item.path for item in split.evaluation], scale=scale, channels=channels).images)
    is_defect = np.array([item.is_defect for item in split.evaluation])
    patches = torch.cat([f.flatten(1).T for f in train])
    print(f"{name} scale={scale} stages={stages}: {len(train)} training goods, {len(patches)} patches, "
          f"features {seconds:.1f} s; validation {len(held)} images, {int(is_defect.sum())} defective", flush=True)
    g = torch.Generator().manual_seed(0)
    pool = patches[torch.randperm(len(patches), generator=g)[:POOL]]
    for size in BANKS:
        t0 = time.perf_counter()
        bank = pool[greedy_coreset(pool, size, generator=g)]
        coreset_s = time.perf_counter() - t0
        maps = [nearest_distance(f.flatten(1).T, bank).view(f.shape[1:]).numpy() for f in held]
        for sigma in SIGMAS:
            scores = [(cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) if sigma else m).max()
                      for m in maps]
            print(f"  bank={size} coreset_s={coreset_s:.1f} smoothing={sigma} "
                  f"image_auroc={auroc(is_defect, np.array(scores)):.4f}", flush=True)


if __name__ == "__main__":
    main()
