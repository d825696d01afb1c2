"""Choosing EIDN's settings on a validation split cut from train/ (test/ is never read).

    python benchmarks/eidn_validation.py SET SCALE G STAGES [KEY=V,KEY=V ...]
        e.g. brickwork_crack 1.0 0.05 3,6 epochs=20 epochs=40,painted_share=0.3

Computes the features of the split's training goods (up to 400), of 400 pseudo-anomalies painted
on them and of the labelled defects (anomaly fraction G) once, then trains the head once per
configuration given (``epochs`` and any EIDN hyper-parameter, ``labelled_share`` among them; none:
the defaults) and prints the validation image AUROC for each map smoothing.  One split and seed:
indicative; ``bench --seeds`` measures the settings chosen.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from inspector.app.jobs import HEAD_GOODS, PSEUDO_IMAGES, cell_coverage  # noqa: E402
from inspector.detect.pipeline import smooth_map  # noqa: E402
from inspector.detect.scoring import map_images, whole_images  # noqa: E402
from inspector.learn.backbones import pretrained_backbone  # noqa: E402
from inspector.learn.datasets import detect_channels, discover, load_images  # noqa: E402
from inspector.learn.metrics import auroc  # noqa: E402
from inspector.learn.pseudo_anomalies import make_pseudo_anomalies  # noqa: E402
from inspector.learn.splits import make_split  # noqa: E402
from inspector.learn.training import FeatureTrainingData, TrainConfig, train  # noqa: E402

SIGMAS = (0.0, 1.0, 2.0, 4.0, 8.0, 12.0)


def parse(config: str) -> dict:
    out = {}
    for item in filter(None, config.split(",")):
        key, value = item.split("=")
        out[key] = float(value) if "." in value else int(value)
    return out


def main() -> None:
    name, scale, fraction = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    stages = [int(s) for s in sys.argv[4].split(",")]
    configs = [parse(c) for c in sys.argv[5:]] or [{}]
    dataset = discover(REPO.parent / "shared" / "data" / name)
    rng = np.random.default_rng(0)
    split = make_split(dataset, anomaly_fraction=fraction, rng=rng, protocol="validation")
    channels = detect_channels(dataset.train_good)
    probe = models.create("eidn", channels=channels, stages=stages)
    backbone = probe.patch_features.backbone
    weights = pretrained_backbone(backbone.name, backbone.stages).state_dict()
    probe.patch_features.backbone.load_weights(weights)
    probe.patch_features.align()
    t0 = time.perf_counter()
    goods = load_images(split.train_good[:HEAD_GOODS], scale=scale, channels=channels).images
    pseudo, masks, painted_on = make_pseudo_anomalies(goods, PSEUDO_IMAGES, rng)
    labelled = load_images(split.labelled, scale=scale, channels=channels).images if split.labelled else []
    data = FeatureTrainingData(whole_images(probe, probe.features, goods), whole_images(probe, probe.features, pseudo),
                               [cell_coverage(m, probe.map_stride) for m in masks],
                               whole_images(probe, probe.features, labelled) if labelled else [])
    held = load_images([item.path for item in split.evaluation], scale=scale, channels=channels).images
    is_defect = np.array([item.is_defect for item in split.evaluation])
    print(f"{name} scale={scale} G={fraction} stages={stages}: {len(goods)} goods, {len(pseudo)} pseudo, "
          f"{len(labelled)} labelled; "
          f"features {time.perf_counter() - t0:.0f} s; validation {len(held)} images, {int(is_defect.sum())} defective",
          flush=True)
    for config in configs:
        config = dict(config)
        epochs = int(config.pop("epochs", models.get_method("eidn").defaults.epochs))
        torch.manual_seed(0)
        detector = models.create("eidn", channels=channels, stages=stages, **config)
        detector.patch_features.load_state_dict(probe.patch_features.state_dict())
        train_data = FeatureTrainingData(detector.begin_training(data.normal),
                                         detector.training_form(data.pseudo, painted_on), data.pseudo_masks,
                                         detector.training_form(data.labelled, [None] * len(data.labelled)),
                                         detector.labelled_share)
        t0 = time.perf_counter()
        d = detector.defaults
        report = train(detector, train_data, TrainConfig(epochs, d.steps_per_epoch, d.batch_size, seed=0))
        seconds = time.perf_counter() - t0
        maps = [answer.map for answer in map_images(detector, held)]
        peaks = {sigma: np.array([float(smooth_map(m, sigma).max()) for m in maps]) for sigma in SIGMAS}
        cells = " ".join(f"s{sigma:g}={auroc(is_defect, peaks[sigma]):.4f}" for sigma in SIGMAS)
        print(f"  epochs={epochs} share={detector.labelled_share} {config} train_s={seconds:.0f} "
              f"loss={report.last_losses.get('loss', 0):.3f}  {cells}", flush=True)


if __name__ == "__main__":
    main()
