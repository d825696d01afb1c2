"""EDE's score in latent space (the paper) against image space, and its weight w1, on a validation
split cut from train/.

    python benchmarks/ede_score_space.py SET [SEED ...] [--size N] [--set KEY=VALUE ...]

Trains EDE once a seed (its defaults, or the given tile size and hyper-parameters; test/ never
read), then scores the validation images with the same network both ways and with w1 = 0, 0.5 and
1 (the paper's operator knob: w1 weighs ||z - z2||^2, 1 - w1 ||z - z1'||^2; in image space
||x - x2||^2 and ||x - x1'||^2), and prints each image AUROC.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspector.app.jobs import TrainOptions, evaluate, train_model  # noqa: E402
from inspector.cli import parse_hparam  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("set")
    p.add_argument("seeds", nargs="*", type=int, default=[0])
    p.add_argument("--size", type=int)
    p.add_argument("--set", dest="hparams", type=parse_hparam, action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    for seed in args.seeds:
        hparams = {"score_sigma": None, **dict(args.hparams)}           # the mean errors, as the paper scores
        trained = train_model(TrainOptions(data=REPO.parent / "shared" / "data" / args.set, method="ede", seed=seed,
                                           size=args.size, hparams=hparams, protocol="validation"))
        for space in ("latent", "image"):
            for w1 in (0.0, 0.5, 1.0):
                trained.detector.score_space, trained.detector.score_w1 = space, w1
                metrics = evaluate(trained.inspector(), trained.split.evaluation)
                print(f"{args.set} seed={seed} {' '.join(f'{k}={v}' for k, v in args.hparams)} "
                      f"score_space={space} w1={w1} image_auroc={metrics['image_auroc']:.4f} "
                      f"pixel_auroc={metrics['pixel_auroc']}", flush=True)


if __name__ == "__main__":
    main()
