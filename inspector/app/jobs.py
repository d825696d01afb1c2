"""The train / eval / bench jobs, shared by the command line and (later) the retraining wizard.

train: data folder -> trained, calibrated detector (+ metadata ready for a model file).
evaluate: detector + calibration + data folder's test split -> metrics.
bench: train then evaluate, with the figures the README tables are made of.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import models
from models import Detector

from ..base.errors import InspectorError
from ..base.progress import Progress, ProgressCallback
from ..detect.calibration import DEFAULT_FALSE_ALARM_RATE, Calibration, calibrate
from ..detect.device import device_name, resolve_device
from ..detect.heatmap import map_to_image
from ..detect.scoring import score_tiles
from ..frames.images import ImageReadError, read_mask
from ..learn.datasets import (
    DatasetError,
    MVTecSet,
    defects_for_fraction,
    detect_channels,
    discover,
    load_tiles,
    split_holdout,
)
from ..learn.metrics import auroc, rates_at
from ..learn.pseudo_anomalies import make_pseudo_anomalies
from ..learn.training import TrainConfig, TrainingData, TrainReport, seed_everything, train
from ..modelstore.modelfile import build_metadata

log = logging.getLogger(__name__)

#: Share of train/good held out (not trained on) to calibrate the threshold.
HOLDOUT_FRACTION = 0.1
#: Pseudo-anomalies painted per run, for methods that learn from anomalies.
PSEUDO_POOL = 3000


class OptionError(InspectorError):
    """A training option that the chosen method does not accept; the message says which ones it does."""


def build_detector(cls: type[Detector], size: int, channels: int, hparams: dict[str, Any]) -> Detector:
    unknown = set(hparams) - set(cls.hparam_defaults())
    if unknown:
        raise OptionError(f"method {cls.method!r} has no setting {', '.join(sorted(unknown))}; "
                          f"its settings: {', '.join(f'{k}={v}' for k, v in cls.hparam_defaults().items())}")
    try:
        return cls(size=size, channels=channels, **hparams)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"method {cls.method!r}: {exc}") from exc


@dataclass
class TrainOptions:
    data: Path
    method: str
    anomaly_fraction: float = 0.0
    size: int | None = None
    seed: int = 0
    device: str = "auto"
    epochs: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int | None = None
    flips: bool = False
    time_budget_s: float | None = None
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE
    checkpoint_path: Path | None = None
    resume: bool = False
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainedModel:
    detector: Detector
    calibration: Calibration
    report: TrainReport
    metadata: dict[str, Any]
    dataset: MVTecSet


def _load_progress(progress: ProgressCallback | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(Progress(stage, done, total))


def train_model(opts: TrainOptions, *, dataset: MVTecSet | None = None, progress: ProgressCallback | None = None,
                should_cancel: Callable[[], bool] | None = None) -> TrainedModel:
    dataset = dataset or discover(opts.data)
    cls = models.get_method(opts.method)
    device = resolve_device(opts.device)
    rng = seed_everything(opts.seed)
    size = opts.size or cls.defaults.size
    channels = detect_channels(dataset.train_good)
    detector = build_detector(cls, size, channels, opts.hparams).to(device)

    train_paths, holdout_paths = split_holdout(dataset.train_good, HOLDOUT_FRACTION, rng)
    defect_paths: list[Path] = []
    if cls.uses_anomalies:
        defect_paths = defects_for_fraction(dataset.train_defect, len(train_paths), opts.anomaly_fraction, rng)
    elif opts.anomaly_fraction > 0:
        log.info("method %s learns from good images only; the anomaly fraction is ignored", opts.method)

    normal = load_tiles(train_paths, size=size, channels=channels, progress=_load_progress(progress, "load good"))
    holdout = load_tiles(holdout_paths, size=size, channels=channels)
    labelled = load_tiles(defect_paths, size=size, channels=channels) if defect_paths else None
    if len(normal.tiles) == 0 or len(holdout.tiles) == 0:
        raise DatasetError(f"{opts.data}: none of the good training images could be read")
    pseudo = make_pseudo_anomalies(normal.tiles, PSEUDO_POOL, rng) if detector.wants_pseudo_anomalies else None
    data = TrainingData(normal.tiles, labelled.tiles if labelled else None, pseudo)

    d = cls.defaults
    config = TrainConfig(epochs=opts.epochs or d.epochs, steps_per_epoch=opts.steps_per_epoch or d.steps_per_epoch,
                         batch_size=opts.batch_size or d.batch_size, seed=opts.seed, flips=opts.flips,
                         time_budget_s=opts.time_budget_s, checkpoint_path=opts.checkpoint_path,
                         resume=opts.resume)
    report = train(detector, data, config, progress=progress, should_cancel=should_cancel)

    calibration = calibrate(score_tiles(detector, holdout.tiles, with_maps=False).scores,
                            false_alarm_rate=opts.false_alarm_rate)
    skipped = normal.errors + holdout.errors + (labelled.errors if labelled else [])
    training = {
        "data": str(opts.data), "seed": opts.seed, "device": device_name(device),
        "anomaly_fraction": opts.anomaly_fraction,
        "n_train_good": len(normal.tiles), "n_train_defect": data.n_labelled, "n_pseudo_anomalies": data.n_pseudo,
        "n_calibration_good": len(holdout.tiles), "skipped_files": [f"{p}: {why}" for p, why in skipped],
        "epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch, "batch_size": config.batch_size,
        "flips": config.flips,
        "epochs_done": report.epochs_done, "steps_done": report.steps_done, "stopped_by": report.stopped_by,
        "seconds": round(report.seconds, 2), "final_losses": report.last_losses,
    }
    return TrainedModel(detector, calibration, report, build_metadata(detector, calibration, training=training),
                        dataset)


def evaluate(detector: Detector, calibration: Calibration, dataset: MVTecSet, *,
             progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Score every test image; image AUROC (and per type), pixel AUROC where masks exist."""
    if not dataset.test:
        raise DatasetError(f"{dataset.root / 'test'}: no test images")
    items = {t.path: t for t in dataset.test}
    loaded = load_tiles(list(items), size=detector.size, channels=detector.channels,
                        progress=_load_progress(progress, "load test"))
    tested = [items[p] for p in loaded.paths]
    is_defect = np.array([t.is_defect for t in tested])
    if is_defect.all() or not is_defect.any():
        raise DatasetError(f"{dataset.root / 'test'}: needs readable good and defective images")
    want_maps = detector.has_difference_map and dataset.has_masks
    t0 = time.perf_counter()
    out = score_tiles(detector, loaded.tiles, with_maps=want_maps, progress=progress)
    score_seconds = time.perf_counter() - t0
    scores = out.scores

    per_type = {}
    for label in sorted({t.label for t in tested if t.is_defect}):
        goods_and_type = ~is_defect | np.array([t.label == label for t in tested])
        per_type[label] = auroc(is_defect[goods_and_type], scores[goods_and_type])
    far, recall = rates_at(calibration.threshold, scores[~is_defect], scores[is_defect])
    result = {
        "n_test_good": int((~is_defect).sum()), "n_test_defect": int(is_defect.sum()),
        "image_auroc": auroc(is_defect, scores),
        "pixel_auroc": _pixel_auroc(tested, out.maps, loaded.shapes) if out.maps is not None else None,
        "auroc_per_type": per_type,
        "threshold": calibration.threshold,
        "false_alarm_rate": far, "recall": recall,
        "score_ms_per_image": 1000.0 * score_seconds / len(tested),
        "test_skipped_files": [f"{p}: {why}" for p, why in loaded.errors],
    }
    return result


def _pixel_auroc(tested, maps: np.ndarray, shapes) -> float | None:
    """Pixel AUROC over all test images with a usable mask (goods count as all-normal).

    Defects whose mask file is missing or empty are left out: they cannot be scored per pixel.
    """
    labels, values = [], []
    for item, tile_map, shape in zip(tested, maps, shapes, strict=True):
        if item.is_defect:
            if item.mask is None:
                continue
            try:
                gt = read_mask(item.mask)
            except ImageReadError as exc:
                log.warning("mask skipped: %s", exc)
                continue
            if not gt.any() or gt.shape != tuple(shape):
                continue
        else:
            gt = np.zeros(shape, bool)
        labels.append(gt.ravel())
        values.append(map_to_image(tile_map, shape).ravel())
    if not labels:
        return None
    labels_all = np.concatenate(labels)
    if not labels_all.any():
        return None
    return auroc(labels_all, np.concatenate(values))


def bench(opts: TrainOptions, *, progress: ProgressCallback | None = None,
          should_cancel: Callable[[], bool] | None = None) -> tuple[TrainedModel, dict[str, Any]]:
    """Train on train/, calibrate on held-out goods, score test/: the bench contract's figures."""
    dataset = discover(opts.data, need_test=True)
    trained = train_model(opts, dataset=dataset, progress=progress, should_cancel=should_cancel)
    metrics = evaluate(trained.detector, trained.calibration, dataset, progress=progress)
    t = trained.metadata["training"]
    result = {
        "method": opts.method, "data": str(opts.data), "size": trained.detector.size,
        "channels": trained.detector.channels, "anomaly_fraction": opts.anomaly_fraction,
        "n_train_good": t["n_train_good"], "n_train_defect": t["n_train_defect"],
        "n_pseudo_anomalies": t["n_pseudo_anomalies"], "n_calibration_good": t["n_calibration_good"],
        **{k: metrics[k] for k in ("n_test_good", "n_test_defect", "image_auroc", "pixel_auroc",
                                   "auroc_per_type", "threshold")},
        "calibration_rule": trained.calibration.rule,
        "target_false_alarm_rate": trained.calibration.target_false_alarm_rate,
        "false_alarm_rate": metrics["false_alarm_rate"], "recall": metrics["recall"],
        "train_seconds": round(trained.report.seconds, 2), "epochs_done": t["epochs_done"],
        "stopped_by": t["stopped_by"], "score_ms_per_image": metrics["score_ms_per_image"],
        "device": t["device"], "seed": opts.seed, "hparams": trained.detector.hparams(),
        "skipped_files": t["skipped_files"] + metrics["test_skipped_files"],
    }
    trained.metadata["metrics"] = {k: result[k] for k in ("image_auroc", "pixel_auroc", "false_alarm_rate", "recall")}
    return trained, result
