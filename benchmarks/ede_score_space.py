"""EDE's score in latent space (the paper) against image space, on a validation split cut from train/.

    python benchmarks/ede_score_space.py SET [SEED]

Trains EDE once (its defaults, test/ never read), then scores the validation images both ways with
the same network and prints each image AUROC.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspector.app.jobs import TrainOptions, evaluate, train_model  # noqa: E402


def main() -> None:
    name = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    trained = train_model(TrainOptions(data=REPO.parent / "shared" / "data" / name, method="ede", seed=seed,
                                       protocol="validation"))
    for space in ("latent", "image"):
        trained.detector.score_space = space
        metrics = evaluate(trained.inspector(), trained.split.evaluation)
        print(f"{name} seed={seed} score_space={space} image_auroc={metrics['image_auroc']:.4f} "
              f"pixel_auroc={metrics['pixel_auroc']}", flush=True)


if __name__ == "__main__":
    main()
