"""A reconstruction method's tile score on a validation split cut from train/: the paper's mean error
against the peak of the difference map smoothed by sigma pixels (``score_sigma``).

    python benchmarks/map_score_validation.py SET METHOD [SEED ...] [--size N] [--set KEY=VALUE ...]
        e.g. magnetic_tile agad 0

Trains the method once a seed (test/ never read), scores the validation images (each one tile, as
``bench`` scores them) once with their difference maps, and prints the image AUROC of the paper's
score and of the smoothed peak at each sigma.
"""

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspector.app.jobs import TrainOptions, train_model  # noqa: E402
from inspector.cli import parse_hparam  # noqa: E402
from inspector.detect.scoring import score_tiles  # noqa: E402
from inspector.learn.datasets import load_tiles  # noqa: E402
from inspector.learn.metrics import auroc  # noqa: E402
from models.map_score import smoothed_peak  # noqa: E402

SIGMAS = (0.0, 1.0, 2.0, 4.0, 8.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("set")
    p.add_argument("method", choices=("ae", "agad", "ede"))
    p.add_argument("seeds", nargs="*", type=int, default=[0])
    p.add_argument("--size", type=int)
    p.add_argument("--set", dest="hparams", type=parse_hparam, action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    hparams = {"score_sigma": None, **dict(args.hparams)}
    for seed in args.seeds:
        trained = train_model(TrainOptions(data=REPO.parent / "shared" / "data" / args.set, method=args.method,
                                           seed=seed, size=args.size, hparams=hparams, protocol="validation"))
        detector, items = trained.detector, trained.split.evaluation
        loaded = load_tiles([item.path for item in items], size=detector.size, channels=detector.channels)
        by_path = {item.path: item.is_defect for item in items}
        is_defect = [by_path[path] for path in loaded.paths]
        out = score_tiles(detector, loaded.tiles, with_maps=True)
        maps = torch.from_numpy(out.maps)[:, None]
        figures = {"paper": auroc(is_defect, out.scores)}
        figures |= {f"sigma={s:g}": auroc(is_defect, smoothed_peak(maps, s).numpy()) for s in SIGMAS}
        print(f"{args.set} {args.method} seed={seed} " + " ".join(f"{k}={v:.4f}" for k, v in figures.items()),
              flush=True)


if __name__ == "__main__":
    main()
