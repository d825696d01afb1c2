"""The train / eval / bench jobs, shared by the command line and the retraining wizard.

train: data folder -> trained, calibrated detector (+ metadata ready for a model file).
evaluate: an Inspector + test images -> metrics.
bench: train, then evaluate on ``test/`` (or on a validation split cut from ``train/``).

Every image is scored exactly as ``inspect`` scores it: through an ``Inspector`` with the model's
own tiling or scale.  Calibration runs that way on held-out goods, and so do the test figures, so
``bench`` measures what an operator gets.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import models
from models import Detector
from models.patchcore import draw_cells

from ..base.errors import InspectorError
from ..base.progress import Progress, ProgressCallback
from ..detect.calibration import DEFAULT_FALSE_ALARM_RATE, Calibration, calibrate
from ..detect.device import device_name, resolve_device
from ..detect.pipeline import FrameResult, Inspector
from ..detect.scoring import whole_images
from ..frames.frame import Frame
from ..frames.images import ImageReadError, decode_workers, read_image, read_mask
from ..learn.backbones import pretrained_backbone
from ..learn.datasets import (
    DatasetError,
    MVTecSet,
    TestItem,
    detect_channels,
    discover,
    load_grid_tiles,
    load_images,
    load_tiles,
)
from ..learn.metrics import auroc, rates_at
from ..learn.pseudo_anomalies import make_pseudo_anomalies
from ..learn.splits import Split, make_split
from ..learn.training import FeatureTrainingData, TrainConfig, TrainingData, TrainReport, seed_everything, train
from ..modelstore.modelfile import build_metadata
from ..modelstore.registry import data_hash
from .surfaces import AUTO, MIN_DEFECTS_TO_CHOOSE, SURFACES, applies_to, check_surface

log = logging.getLogger(__name__)

#: Pseudo-anomalous tiles painted per run, for tile methods that learn from anomalies.
PSEUDO_POOL = 3000
#: A tile method trained on each image's inspection grid (``--tile``) keeps at most this many
#: good tiles (about 80 MB of grey or 240 MB of colour 64-pixel tiles), spread over the images.
MAX_TRAIN_TILES = 20_000
#: A head trained on features (EIDN) sees at most this many good training images (a random subset)
#: and PSEUDO_PER_GOOD pseudo-anomalies painted on each, at most PSEUDO_IMAGES: their descriptors
#: stay in memory for the run.
HEAD_GOODS = 400
PSEUDO_PER_GOOD = 3
PSEUDO_IMAGES = 400
#: Images inspected together when calibrating and evaluating.
EVAL_BATCH = 32
#: The Inspector's calibration is replaced by the real one once the raw scores are known.
_PROVISIONAL = Calibration(threshold=0.0, good_median=0.0, scale=1.0, rule="provisional",
                           target_false_alarm_rate=None, n_good=0, n_defect=0)


class OptionError(InspectorError):
    """A training option that the chosen method does not accept; the message says which ones it does."""


def build_detector(cls: type[Detector], size: int | None, channels: int, hparams: dict[str, Any]) -> Detector:
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
    #: Fully convolutional methods: the images are resized by this before the model sees them.
    scale: float = 1.0
    #: Fully convolutional methods: the anomaly map's Gaussian smoothing, in map cells (None: the method's own).
    smoothing: float | None = None
    backbone_weights: Path | None = None
    protocol: str = "test"
    #: The memory bank's surface (``surfaces.SURFACES``, or ``auto``): its settings are applied over
    #: ``hparams`` and ``smoothing``.
    surface: str = "parts"
    #: Tile methods: train on ``tile`` x ``tile`` frame-pixel tiles cut every ``stride`` pixels (the
    #: grid inspection then uses); None: each image whole, as one tile.
    tile: int | None = None
    stride: int | None = None


@dataclass
class TrainedModel:
    detector: Detector
    calibration: Calibration
    report: TrainReport
    metadata: dict[str, Any]
    dataset: MVTecSet
    split: Split
    inspection: dict[str, Any]
    #: The raw scores of the held-out calibration goods the threshold was set on.
    calibration_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def inspector(self, **kw) -> Inspector:
        """An Inspector for this model, tiled or scaled as it was trained and calibrated."""
        return Inspector(self.detector, self.calibration, **self.inspection, **kw)


def _load_progress(progress: ProgressCallback | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(Progress(stage, done, total))


def inspect_files(inspector: Inspector, paths: Sequence[Path], *, progress: ProgressCallback | None = None,
                  stage: str = "score") -> Iterator[tuple[int, FrameResult]]:
    """(position, result) for each readable file, inspected in batches as ``inspect`` would; files that
    cannot be read are logged and left out."""
    with ThreadPoolExecutor(max_workers=decode_workers()) as pool:
        for start in range(0, len(paths), EVAL_BATCH):
            chunk = list(paths[start:start + EVAL_BATCH])
            frames = []
            for offset, (path, fut) in enumerate(zip(chunk, [pool.submit(read_image, p) for p in chunk], strict=True)):
                try:
                    frames.append(Frame(fut.result(), str(path), start + offset, time.monotonic()))
                except ImageReadError as exc:
                    log.warning("left out: %s", exc)
            for frame, result in zip(frames, inspector.inspect_batch(frames), strict=True):
                yield frame.index, result
            if progress is not None:
                progress(Progress(stage, min(start + EVAL_BATCH, len(paths)), len(paths)))


def _good_features(detector: Detector, opts: TrainOptions, paths: Sequence[Path], channels: int,
                   progress: ProgressCallback | None):
    """The good training images at the model's scale, and their patch descriptors (D, h, w) each."""
    goods = load_images(paths, scale=opts.scale, channels=channels, progress=_load_progress(progress, "load good"))
    if not goods.images:
        raise DatasetError(f"{opts.data}: none of the good training images could be read")
    return goods, whole_images(detector, detector.features, goods.images, progress=progress, stage="features")


#: A memory bank trained with ``flips`` also covers each good image's mirror images: left-right,
#: up-down and both.
MIRRORS: tuple[Callable[[np.ndarray], np.ndarray], ...] = (
    lambda im: im[:, ::-1], lambda im: im[::-1], lambda im: im[::-1, ::-1])
#: Mirror images whose descriptors are computed at once, before they are thinned.
MIRROR_CHUNK = 32


def _with_mirror_images(detector: Detector, images: list[np.ndarray], features: list[torch.Tensor], seed: int,
                        progress: ProgressCallback | None) -> list[torch.Tensor]:
    """The descriptors a bank trained with ``flips`` draws from: the good images' and their mirror
    images', each image's cells thinned as they come to the share the bank samples (so that four
    times the descriptors never sit in memory at once).

    Why an option: measured on validation splits cut from ``train/`` (seed 0, 300 goods, image AUROC
    at the default smoothing), mirror images help a part that lies turned any way round — casting's
    impellers 0.929 -> 0.955 — and not a surface seen one way up: brickwork 0.926 -> 0.929, magnetic
    tile 0.886 -> 0.870.  The gain is where goods are few: from all of casting's goods it is within
    noise, on validation and test alike.  And a bank that has seen mirror images cannot tell a part
    that is mirrored or upside down, which on some lines is the defect.
    """
    generator = torch.Generator().manual_seed(seed)
    views = 1 + len(MIRRORS)
    share = min(1.0, detector.max_patches / (views * sum(f[0].numel() for f in features)))
    pool = [draw_cells(f, share, generator=generator) for f in features]
    total, done = len(MIRRORS) * len(images), 0
    for mirror in MIRRORS:
        for start in range(0, len(images), MIRROR_CHUNK):
            chunk = [np.ascontiguousarray(mirror(im)) for im in images[start:start + MIRROR_CHUNK]]
            pool += [draw_cells(f, share, generator=generator)
                     for f in whole_images(detector, detector.features, chunk)]
            done += len(chunk)
            if progress is not None:
                progress(Progress("features (mirror images)", done, total))
    return pool


#: The good images' descriptors of one fit, kept for the next fit of the same images and backbone
#: (``surface=auto`` fits the bank once per surface): key -> (goods, descriptors).
FeatureCache = dict


def _feature_key(detector: Detector, opts: TrainOptions, paths: Sequence[Path]) -> tuple:
    hp = detector.hparams()
    return (tuple(paths), opts.scale, opts.backbone_weights, hp["backbone"], tuple(hp["stages"]), hp["pool"],
            opts.flips, opts.seed if opts.flips else None)


def _fit_features(detector: Detector, opts: TrainOptions, split: Split, channels: int,
                  progress: ProgressCallback | None, cache: FeatureCache | None = None
                  ) -> tuple[TrainReport, dict[str, Any], None]:
    """A memory bank: the backbone's features of each good image (and with ``flips`` of its mirror
    images), computed once (or taken from ``cache``), and the bank fitted on them."""
    t0 = time.perf_counter()
    key = _feature_key(detector, opts, split.train_good)
    if cache is not None and key in cache:
        goods, features = cache[key]
    else:
        goods, features = _good_features(detector, opts, split.train_good, channels, progress)
        if opts.flips:
            features = _with_mirror_images(detector, goods.images, features, opts.seed, progress)
        if cache is not None:
            cache[key] = goods, features
    info = detector.fit_features([f.to(detector.device) for f in features],
                                 generator=torch.Generator().manual_seed(opts.seed))
    report = TrainReport(epochs_done=1, steps_done=0, seconds=time.perf_counter() - t0, stopped_by="completed",
                         last_losses={k: float(v) for k, v in info.items()})
    return report, {"n_train_good": len(goods.images), "n_train_defect": 0, "n_pseudo_anomalies": 0,
                    "skipped": goods.errors, "fit": info}, None


def pseudo_count(n_goods: int) -> int:
    return min(PSEUDO_IMAGES, PSEUDO_PER_GOOD * n_goods)


def cell_coverage(mask: np.ndarray, stride: int) -> torch.Tensor:
    """A pixel mask (H, W) in [0, 1] as each map cell's covered share: (1, ceil(H / stride), ceil(W / stride))."""
    h, w = mask.shape
    hc, wc = -(-h // stride), -(-w // stride)
    padded = np.zeros((hc * stride, wc * stride), np.float32)
    padded[:h, :w] = mask
    return torch.from_numpy(padded.reshape(hc, stride, wc, stride).mean(axis=(1, 3)))[None]


def _train_features(detector: Detector, opts: TrainOptions, split: Split, channels: int, rng: np.random.Generator,
                    progress: ProgressCallback | None, should_cancel: Callable[[], bool] | None
                    ) -> tuple[TrainReport, dict[str, Any], TrainConfig]:
    """A head on features (EIDN): descriptors of the good images, of pseudo-anomalies painted on them at
    the same scale (with their masks) and of the labelled defects, each computed once; then the
    engine's steps."""
    t0 = time.perf_counter()
    paths = list(split.train_good)
    if len(paths) > HEAD_GOODS:
        paths = [paths[i] for i in sorted(rng.choice(len(paths), HEAD_GOODS, replace=False))]
    goods, normal = _good_features(detector, opts, paths, channels, progress)
    labelled = load_images(split.labelled, scale=opts.scale, channels=channels) if split.labelled else None
    pseudo, masks, painted_on = (make_pseudo_anomalies(goods.images, pseudo_count(len(goods.images)), rng)
                                 if detector.wants_pseudo_anomalies
                                 else ([], [], []))
    normal = detector.begin_training(normal)
    pseudo_features = whole_images(detector, detector.features, pseudo, progress=progress,
                                   stage="features (pseudo-anomalies)")
    labelled_features = whole_images(detector, detector.features, labelled.images, progress=progress,
                                     stage="features (labelled)") if labelled else []
    data = FeatureTrainingData(normal, detector.training_form(pseudo_features, painted_on),
                               [cell_coverage(m, detector.map_stride) for m in masks],
                               detector.training_form(labelled_features, [None] * len(labelled_features)),
                               detector.labelled_share)
    config = _train_config(detector, opts)
    report = train(detector, data, config, progress=progress, should_cancel=should_cancel)
    report = dataclasses.replace(report, seconds=time.perf_counter() - t0)
    return report, {"n_train_good": len(goods.images), "n_train_defect": data.n_labelled,
                    "n_pseudo_anomalies": data.n_pseudo,
                    "skipped": goods.errors + (labelled.errors if labelled else [])}, config


def _train_config(detector: Detector, opts: TrainOptions) -> TrainConfig:
    d = type(detector).defaults
    return TrainConfig(epochs=opts.epochs or d.epochs, steps_per_epoch=opts.steps_per_epoch or d.steps_per_epoch,
                       batch_size=opts.batch_size or d.batch_size, seed=opts.seed, flips=opts.flips,
                       time_budget_s=opts.time_budget_s, checkpoint_path=opts.checkpoint_path, resume=opts.resume)


def _train_tiles(detector: Detector, opts: TrainOptions, split: Split, channels: int, rng: np.random.Generator,
                 progress: ProgressCallback | None, should_cancel: Callable[[], bool] | None
                 ) -> tuple[TrainReport, dict[str, Any], TrainConfig]:
    """A tile method: tiles of the training images (each whole, or its inspection grid's), trained step by
    step by the engine."""
    size = detector.size
    loading = _load_progress(progress, "load good")
    if opts.tile is None:
        normal = load_tiles(split.train_good, size=size, channels=channels, progress=loading)
    else:
        normal = load_grid_tiles(split.train_good, size=size, tile=opts.tile, stride=opts.stride, channels=channels,
                                 max_tiles=MAX_TRAIN_TILES, progress=loading)
    labelled = load_tiles(split.labelled, size=size, channels=channels) if split.labelled else None
    if len(normal.tiles) == 0:
        raise DatasetError(f"{opts.data}: none of the good training images could be read")
    pseudo = (np.stack(make_pseudo_anomalies(list(normal.tiles), PSEUDO_POOL, rng)[0])
              if detector.wants_pseudo_anomalies else None)
    data = TrainingData(normal.tiles, labelled.tiles if labelled else None, pseudo, detector.labelled_share)
    config = _train_config(detector, opts)
    report = train(detector, data, config, progress=progress, should_cancel=should_cancel)
    return report, {"n_train_good": len(set(normal.paths)), "n_train_tiles": len(normal.tiles),
                    "n_train_defect": data.n_labelled,
                    "n_pseudo_anomalies": data.n_pseudo,
                    "skipped": normal.errors + (labelled.errors if labelled else [])}, config


def train_model(opts: TrainOptions, *, dataset: MVTecSet | None = None, progress: ProgressCallback | None = None,
                should_cancel: Callable[[], bool] | None = None, cache: FeatureCache | None = None) -> TrainedModel:
    dataset = dataset or discover(opts.data)
    problem = check_surface(opts.surface, opts.method)
    if problem:
        raise OptionError(problem)
    if opts.surface == AUTO:
        return _train_choosing_surface(opts, dataset, progress, should_cancel)
    if applies_to(opts.method):
        surface = SURFACES[opts.surface]
        opts = dataclasses.replace(opts, hparams={**surface.hparams, **opts.hparams},
                                   smoothing=surface.smoothing if opts.smoothing is None else opts.smoothing)
    cls = models.get_method(opts.method)
    device = resolve_device(opts.device)
    rng = seed_everything(opts.seed)
    channels = detect_channels(dataset.train_good)
    fully_convolutional = cls.defaults.size is None
    if fully_convolutional and opts.size is not None:
        raise OptionError(f"method {cls.method!r} sees whole images at their own size: --size applies to tile "
                          f"methods; use --scale to resize")
    if fully_convolutional and (opts.tile is not None or opts.stride is not None):
        raise OptionError(f"method {cls.method!r} sees whole images at their own size: --tile and --stride apply "
                          f"to tile methods; use --scale to resize")
    if opts.stride is not None and opts.tile is None:
        raise OptionError("--stride needs --tile: without a tile size each image is one tile")
    if opts.tile is not None and cls.uses_anomalies and opts.anomaly_fraction > 0:
        raise OptionError(f"--tile trains {cls.method!r} on goods only (--anomaly-fraction 0): a labelled defect "
                          f"has an image label, not a place, so its tiles cannot be told from good ones")
    size = None if fully_convolutional else (opts.size or cls.defaults.size)
    detector = build_detector(cls, size, channels, opts.hparams)
    if fully_convolutional:
        features = detector.patch_features
        features.backbone.load_weights(pretrained_backbone(features.backbone.name, features.backbone.stages,
                                                           opts.backbone_weights).state_dict())
        features.align()
    elif opts.backbone_weights is not None:
        raise OptionError(f"method {opts.method!r} works on pixels: it takes no backbone weights")
    detector.to(device)
    split = make_split(dataset, anomaly_fraction=opts.anomaly_fraction, rng=rng, protocol=opts.protocol,
                       learns_from_defects=cls.uses_anomalies)
    if opts.anomaly_fraction > 0 and not cls.uses_anomalies:
        log.info("method %s learns from good images only; the anomaly fraction is ignored", opts.method)

    if fully_convolutional:
        if cls.gradient_free:
            report, counts, config = _fit_features(detector, opts, split, channels, progress, cache)
        else:
            report, counts, config = _train_features(detector, opts, split, channels, rng, progress, should_cancel)
        smoothing = cls.default_smoothing if opts.smoothing is None else opts.smoothing
        inspection = {"scale": opts.scale, "smoothing": smoothing}
    else:
        report, counts, config = _train_tiles(detector, opts, split, channels, rng, progress, should_cancel)
        inspection = {} if opts.tile is None else {"tile": opts.tile, "stride": opts.stride}
    detector.eval()

    provisional = Inspector(detector, _PROVISIONAL, **inspection)
    good_scores = [r.score for _, r in inspect_files(provisional, split.calibration_good, progress=progress,
                                                     stage="calibrate") if r.error is None]
    if not good_scores:
        raise DatasetError(f"{opts.data}: none of the held-out good images could be scored")
    calibration = calibrate(np.array(good_scores), false_alarm_rate=opts.false_alarm_rate)
    training = {
        "data": str(opts.data), "data_hash": data_hash([*split.train_good, *split.labelled]),
        "seed": opts.seed, "device": device_name(device), "protocol": opts.protocol,
        "anomaly_fraction": opts.anomaly_fraction,
        "n_train_good": counts["n_train_good"], "n_train_defect": counts["n_train_defect"],
        "n_pseudo_anomalies": counts["n_pseudo_anomalies"], "n_calibration_good": len(good_scores),
        "skipped_files": [f"{p}: {why}" for p, why in counts["skipped"]],
        "epochs_done": report.epochs_done, "steps_done": report.steps_done, "stopped_by": report.stopped_by,
        "seconds": round(report.seconds, 2), "final_losses": report.last_losses,
    }
    if config is not None:
        training |= {"epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch,
                     "batch_size": config.batch_size, "flips": config.flips}
    if opts.tile is not None:
        training["n_train_tiles"] = counts["n_train_tiles"]
    if fully_convolutional:
        training["backbone_weights"] = str(opts.backbone_weights) if opts.backbone_weights else "shipped"
    if applies_to(opts.method):
        training |= {"surface": opts.surface, "flips": opts.flips}
    metadata = build_metadata(detector, calibration, training=training)
    if inspection:
        metadata["inspection"] = inspection
    return TrainedModel(detector, calibration, report, metadata, dataset, split, inspection, np.array(good_scores))


def _train_choosing_surface(opts: TrainOptions, dataset: MVTecSet, progress: ProgressCallback | None,
                            should_cancel: Callable[[], bool] | None) -> TrainedModel:
    """``surface=auto``: fit the bank once per surface and keep the one whose scores best separate the
    held-out calibration goods from the labelled defects (image AUROC; ties go to the first, parts).
    The bank never learns from those defects: they are the ones a method that learns from defects
    would be given (the anomaly fraction G)."""
    labelled = make_split(dataset, anomaly_fraction=opts.anomaly_fraction, rng=np.random.default_rng(opts.seed),
                          protocol=opts.protocol).labelled
    if len(labelled) < MIN_DEFECTS_TO_CHOOSE:
        log.info("surface auto: %d labelled defects, too few to choose with; the parts surface", len(labelled))
        trained = train_model(dataclasses.replace(opts, surface="parts"), dataset=dataset, progress=progress,
                              should_cancel=should_cancel)
        trained.metadata["training"]["surface_choice"] = {"chosen": "parts", "n_defects": len(labelled),
                                                          "reason": "too few labelled defects to choose with"}
        return trained
    best, figures, cache, t0 = None, {}, FeatureCache(), time.perf_counter()
    for name in SURFACES:
        def staged(update: Progress, name=name) -> None:
            if progress is not None:
                progress(dataclasses.replace(update, stage=f"{update.stage} ({name} surface)"))

        trained = train_model(dataclasses.replace(opts, surface=name), dataset=dataset, progress=staged,
                              should_cancel=should_cancel, cache=cache)
        goods = trained.calibration_scores                      # scored once already, for the threshold
        defects = [r.score for _, r in inspect_files(trained.inspector(), labelled, progress=staged,
                                                     stage="choose surface") if r.error is None]
        if not defects:
            raise DatasetError(f"{opts.data}: none of the labelled defects could be scored to choose a surface")
        figures[name] = auroc(np.r_[np.zeros(len(goods), bool), np.ones(len(defects), bool)],
                              np.r_[goods, defects])
        log.info("surface %s: AUROC %.4f on %d calibration goods and %d labelled defects",
                 name, figures[name], len(goods), len(defects))
        if best is None or figures[name] > figures[best.metadata["training"]["surface"]]:
            best = trained
    best.metadata["training"]["surface_choice"] = {
        "chosen": best.metadata["training"]["surface"], "n_defects": len(labelled),
        "auroc": {k: round(float(v), 4) for k, v in figures.items()}}
    best.report = dataclasses.replace(best.report, seconds=time.perf_counter() - t0)     # every fit, and choosing
    best.metadata["training"]["seconds"] = round(best.report.seconds, 2)
    return best


def evaluate(inspector: Inspector, items: Sequence[TestItem], *, root: Path | None = None,
             progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Inspect every item as ``inspect`` would: image AUROC (and per type), the false-alarm rate and
    recall at the calibrated threshold, and pixel AUROC from the heat maps where masks exist."""
    if not items:
        raise DatasetError(f"{root}: no images to evaluate on")
    with_masks = any(item.mask is not None for item in items)
    t0 = time.perf_counter()
    scored: list[tuple[TestItem, float]] = []
    pixel_labels, pixel_values = [], []
    for i, result in inspect_files(inspector, [item.path for item in items], progress=progress):
        if result.error is not None:
            log.warning("left out: %s: %s", result.item, result.error)
            continue
        item = items[i]
        scored.append((item, result.score))
        if with_masks:
            gt = _mask_for(item, result.image.shape[:2])
            if gt is not None:
                pixel_labels.append(gt.ravel())
                pixel_values.append(result.heat.ravel())
    seconds = time.perf_counter() - t0
    scored_paths = {item.path for item, _ in scored}
    is_defect = np.array([item.is_defect for item, _ in scored])
    scores = np.array([s for _, s in scored])
    if is_defect.all() or not is_defect.any():
        raise DatasetError(f"{root}: needs readable good and defective images")
    per_type = {}
    for label in sorted({item.label for item, _ in scored if item.is_defect}):
        keep = ~is_defect | np.array([item.label == label for item, _ in scored])
        per_type[label] = auroc(is_defect[keep], scores[keep])
    far, recall = rates_at(inspector.calibration.threshold, scores[~is_defect], scores[is_defect])
    pixel = None
    if pixel_labels:
        labels_all = np.concatenate(pixel_labels)
        if labels_all.any():
            pixel = auroc(labels_all, np.concatenate(pixel_values))
    return {
        "n_test_good": int((~is_defect).sum()), "n_test_defect": int(is_defect.sum()),
        "image_auroc": auroc(is_defect, scores), "pixel_auroc": pixel, "auroc_per_type": per_type,
        "threshold": inspector.calibration.threshold, "false_alarm_rate": far, "recall": recall,
        "score_ms_per_image": 1000.0 * seconds / max(1, len(scored)),
        "test_skipped_files": [str(item.path) for item in items if item.path not in scored_paths],
    }


def _mask_for(item: TestItem, shape: tuple[int, int]) -> np.ndarray | None:
    """The item's ground truth: all-normal for a good image; its mask for a defect (None when it has
    none, or an empty or mis-sized one: such a defect cannot be scored per pixel)."""
    if not item.is_defect:
        return np.zeros(shape, bool)
    if item.mask is None:
        return None
    try:
        gt = read_mask(item.mask)
    except ImageReadError as exc:
        log.warning("mask skipped: %s", exc)
        return None
    return gt if gt.any() and gt.shape == tuple(shape) else None


def bench(opts: TrainOptions, *, progress: ProgressCallback | None = None,
          should_cancel: Callable[[], bool] | None = None) -> tuple[TrainedModel, dict[str, Any]]:
    """Train, calibrate on held-out goods, and evaluate on the protocol's images: the bench contract."""
    dataset = discover(opts.data, need_test=opts.protocol == "test")
    trained = train_model(opts, dataset=dataset, progress=progress, should_cancel=should_cancel)
    metrics = evaluate(trained.inspector(), trained.split.evaluation, root=opts.data, progress=progress)
    t = trained.metadata["training"]
    result = {
        "method": trained.detector.method, "data": str(opts.data), "protocol": opts.protocol,
        "size": trained.detector.size, "channels": trained.detector.channels, **trained.inspection,
        "anomaly_fraction": opts.anomaly_fraction,
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
    result |= {k: t[k] for k in ("surface", "surface_choice", "flips", "n_train_tiles") if k in t}
    trained.metadata["metrics"] = {k: result[k] for k in ("image_auroc", "pixel_auroc", "false_alarm_rate", "recall")}
    return trained, result


#: Figures that a multi-seed bench reports as mean and standard deviation.
SEED_FIGURES = ("image_auroc", "pixel_auroc", "false_alarm_rate", "recall", "train_seconds", "score_ms_per_image")


def summarise_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One bench result from runs that differ only in their seed: each figure's mean and (sample)
    standard deviation, and every run kept under ``runs``.  A setting the runs chose differently
    (the surface that ``auto`` picked, say) is None here and named in ``varies_by_seed``."""
    summary = {k: v for k, v in runs[0].items() if k not in SEED_FIGURES and k not in ("seed", "auroc_per_type")}
    varies = [k for k in summary if any(run.get(k) != summary[k] for run in runs[1:])]
    summary |= dict.fromkeys(varies)
    summary["varies_by_seed"] = varies
    summary["seeds"] = [run["seed"] for run in runs]
    for key in SEED_FIGURES:
        values = [run[key] for run in runs if run.get(key) is not None]
        if len(values) != len(runs):
            summary[key] = summary[f"{key}_sd"] = None
            continue
        summary[key] = float(np.mean(values))
        summary[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    types = runs[0].get("auroc_per_type", {})
    summary["auroc_per_type"] = {t: float(np.mean([run["auroc_per_type"][t] for run in runs])) for t in types}
    summary["runs"] = runs
    return summary
