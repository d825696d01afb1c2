"""Choosing the memory bank's settings on a validation split cut from train/ (test/ is never read).

    python benchmarks/patchcore_validation.py SET [--scales 1.0,0.5] [--stages 3,6 2,4 ...]
        [--banks 2048,8192] [--pool N] [--balance] [--no-whiten] [--flips] [--goods 300] [--split-seed 0]

For each scale and stage set, fits banks on up to ``--goods`` of the split's training goods (features
computed once) with the model's own fit, then prints the validation image AUROC for each bank size
and map smoothing.  Seed 0, one split: indicative (one seed moves by about
0.02 here); ``bench --seeds`` measures the settings chosen.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from inspector.app.jobs import MIRRORS  # noqa: E402
from inspector.detect.pipeline import smooth_map  # noqa: E402
from inspector.detect.scoring import whole_images  # noqa: E402
from inspector.learn.backbones import pretrained_backbone  # noqa: E402
from inspector.learn.datasets import detect_channels, discover, load_images  # noqa: E402
from inspector.learn.metrics import auroc  # noqa: E402
from inspector.learn.splits import make_split  # noqa: E402

SIGMAS = (0.0, 1.0, 2.0, 4.0, 8.0)


def _numbers(text: str, kind=float) -> tuple:
    return tuple(kind(v) for v in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set")
    parser.add_argument("--scales", type=_numbers, default=(1.0,))
    parser.add_argument("--stages", nargs="+", type=lambda t: _numbers(t, int), default=[(3, 6)])
    parser.add_argument("--banks", type=lambda t: _numbers(t, int), default=(2048,))
    parser.add_argument("--pool", type=int, default=50_000, help="patches sampled before the coreset")
    parser.add_argument("--balance", action="store_true",
                        help="scale each stage's channels to the same RMS norm over the training patches")
    parser.add_argument("--no-whiten", action="store_true",
                        help="leave the descriptors unwhitened (the model whitens them by default; the texture "
                             "surface is --balance --no-whiten)")
    parser.add_argument("--goods", type=int, default=300, help="training goods the bank sees, at most")
    parser.add_argument("--split-seed", type=int, default=0, help="the seed that cuts the validation split")
    parser.add_argument("--flips", action="store_true",
                        help="the bank also learns the training goods' three mirror images (train --flips)")
    args = parser.parse_args()
    dataset = discover(REPO.parent / "shared" / "data" / args.set)
    split = make_split(dataset, anomaly_fraction=0.0, rng=np.random.default_rng(args.split_seed), protocol="validation",
                       learns_from_defects=False)
    channels = detect_channels(dataset.train_good)
    is_defect = np.array([item.is_defect for item in split.evaluation])
    for scale in args.scales:
        train_images = load_images(split.train_good[:args.goods], scale=scale, channels=channels).images
        if args.flips:
            train_images += [np.ascontiguousarray(mirror(im)) for mirror in MIRRORS for im in train_images]
        held_images = load_images([item.path for item in split.evaluation], scale=scale, channels=channels).images
        for stages in args.stages:
            detector = models.create("patchcore", channels=channels, stages=stages)
            features = detector.patch_features
            features.backbone.load_weights(pretrained_backbone(features.backbone.name, stages).state_dict())
            features.align()
            t0 = time.perf_counter()
            train = whole_images(detector, detector.features, train_images)
            seconds = time.perf_counter() - t0
            held = whole_images(detector, detector.features, held_images)
            print(f"{args.set} scale={scale} stages={stages} balance={args.balance} whiten={not args.no_whiten} "
                  f"flips={args.flips}: "
                  f"{len(train)} training images, {sum(f[0].numel() for f in train)} patches, "
                  f"features {seconds:.1f} s; validation {len(held)} images, {int(is_defect.sum())} defective",
                  flush=True)
            # The model's own fit (sampling, stage weights, coreset), a bank size at a time.
            detector.max_patches, detector.balance_stages, detector.coreset_ratio = args.pool, args.balance, 1.0
            detector.whiten = not args.no_whiten
            for size in args.banks:
                detector.max_bank = size
                t0 = time.perf_counter()
                detector.fit_features(train, generator=torch.Generator().manual_seed(0))
                fit_s = time.perf_counter() - t0
                maps = [detector.score_features(f[None]).maps[0, 0].numpy() for f in held]
                for sigma in SIGMAS:
                    scores = np.array([smooth_map(m, sigma).max() for m in maps])
                    print(f"  bank={size} fit_s={fit_s:.1f} smoothing={sigma} "
                          f"image_auroc={auroc(is_defect, scores):.4f}", flush=True)


if __name__ == "__main__":
    main()
