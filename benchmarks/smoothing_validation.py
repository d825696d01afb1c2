"""A feature method's map smoothing chosen on a validation split cut from train/ (test/ is never read).

    python benchmarks/smoothing_validation.py SET METHOD [--scale S] [--anomaly-fraction G] [--seeds 0,1]
        [--smoothings 1,4,8,12] [--set KEY=VALUE ...]
        e.g. magnetic_tile agad_features --scale 0.5

Trains the method once a seed exactly as ``bench --protocol validation`` does (``train_model``), maps
the validation images once, and prints the image AUROC of the map's maximum after each smoothing
(the image's score as ``inspect`` takes it).  ``bench --smoothing N`` would train once per setting;
this trains once for all of them.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspector.app.jobs import TrainOptions, train_model  # noqa: E402
from inspector.cli import parse_hparam  # noqa: E402
from inspector.detect.pipeline import smooth_map  # noqa: E402
from inspector.detect.scoring import map_images  # noqa: E402
from inspector.learn.datasets import load_images  # noqa: E402
from inspector.learn.metrics import auroc  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("set")
    p.add_argument("method")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--anomaly-fraction", type=float, default=0.0)
    p.add_argument("--seeds", default="0")
    p.add_argument("--smoothings", default="0,1,2,4,8,12,16")
    p.add_argument("--set", dest="hparams", type=parse_hparam, action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    sigmas = [float(s) for s in args.smoothings.split(",")]
    table = []
    for seed in (int(s) for s in args.seeds.split(",")):
        trained = train_model(TrainOptions(data=REPO.parent / "shared" / "data" / args.set, method=args.method,
                                           anomaly_fraction=args.anomaly_fraction, seed=seed, scale=args.scale,
                                           protocol="validation", hparams=dict(args.hparams)))
        held = trained.split.evaluation
        images = load_images([item.path for item in held], scale=args.scale,
                             channels=trained.detector.channels).images
        is_defect = np.array([item.is_defect for item in held])
        maps = [answer.map for answer in map_images(trained.detector, images)]
        row = [auroc(is_defect, np.array([float(smooth_map(m, s).max()) for m in maps])) for s in sigmas]
        table.append(row)
        print(f"{args.set} {args.method} scale={args.scale} G={args.anomaly_fraction} seed={seed} "
              f"train_s={trained.report.seconds:.0f} "
              + " ".join(f"s{s:g}={a:.4f}" for s, a in zip(sigmas, row, strict=True)), flush=True)
    if len(table) > 1:
        print("mean " + " ".join(f"s{s:g}={a:.4f}" for s, a in zip(sigmas, np.mean(table, axis=0), strict=True)))


if __name__ == "__main__":
    main()
