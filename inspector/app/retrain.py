"""Retraining from an operator's samples: the headless service under the retraining wizard.

The operator brings good samples (a folder, frames captured from the line, items marked OK in
review) and, optionally, a few labelled defects.  The service shares them out — a validation slice
of goods (and half of the defects) that training never sees, the rest to train and calibrate on —
trains with a preset, and validates the new model and the active one on the same held-out samples,
so that the operator compares like with like before activating anything.  Nothing is written
until ``register``: a cancelled or failed run leaves the registry and the active model as they were.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import InspectorError
from ..base.progress import Progress, ProgressCallback
from ..detect.calibration import Calibration
from ..detect.pipeline import FrameResult, Inspector
from ..learn.datasets import GOOD, DatasetError, MVTecSet, TestItem, list_images
from ..learn.metrics import auroc, rates_at
from ..learn.splits import calibration_count
from ..learn.training import TrainingCancelled
from ..modelstore.modelfile import save_model
from ..modelstore.registry import Registry, Version
from .jobs import TrainedModel, TrainOptions, inspect_files, train_model
from .surfaces import AUTO, SURFACE_METHODS, applies_to, check_surface, fits_for

#: Fewer good samples than this cannot be shared out into training, calibration and validation.
MIN_GOODS = 20
#: The share of goods held out for validation (at least ``MIN_VALIDATION_GOODS``).
VALIDATION_SHARE = 0.2
MIN_VALIDATION_GOODS = 5
#: Example heat maps the validation keeps: the worst goods and the most and least obvious defects.
EXAMPLES = 8


class RetrainError(InspectorError):
    """Samples or settings that cannot make a model; the message says what is needed."""


@dataclass(frozen=True)
class Preset:
    """What fast / balanced / accurate mean: the resolution a feature method sees, and how long a
    method trained by steps trains (a share of its own schedule)."""

    name: str
    scale: float
    epochs_share: float
    description: str


PRESETS = {
    "fast": Preset("fast", 0.5, 0.25, "half resolution, a quarter of the training steps: minutes on a laptop"),
    "balanced": Preset("balanced", 1.0, 0.5, "native resolution, half the training steps"),
    "accurate": Preset("accurate", 1.0, 1.0, "native resolution, the method's full schedule"),
}


#: Methods an operator chooses from, with what they need.
METHODS = {
    "patchcore": "memory bank of good patches (no defects needed; given some, they choose its surface; the default)",
    "eidn": "triplet embedding (learns from labelled defects, else from synthetic ones; with defects best on castings)",
    "agad_features": "adversarial reconstruction of features (AGAD; needs labelled defects: strong on castings)",
    "ae": "convolutional autoencoder (good samples only)",
}
#: Methods whose figures rest on the labelled defects (README, Results: AGAD on features scores
#: 0.985 on casting with 5 % labels and 0.773 without): the wizard says so when none are given.
WANT_DEFECTS = {"agad_features"}


def fitted_in_one_pass(method: str) -> bool:
    """The method has no training loss to follow (a memory bank)."""
    import models

    return models.get_method(method).gradient_free


@dataclass
class Samples:
    goods: list[Path]
    defects: list[Path] = field(default_factory=list)

    @classmethod
    def from_folders(cls, goods: Sequence[Path], defects: Sequence[Path] = (), *,
                     extra_goods: Sequence[Path] = (), extra_defects: Sequence[Path] = ()) -> Samples:
        """The images below each folder, plus single files (items marked in review), without repeats."""
        def gather(folders, files):
            seen: dict[Path, None] = {}
            for folder in folders:
                for path in list_images(Path(folder)):
                    seen.setdefault(path.resolve())
            for path in files:
                if Path(path).is_file():
                    seen.setdefault(Path(path).resolve())
            return list(seen)

        good = gather(goods, extra_goods)
        bad = set(gather(defects, extra_defects))
        return cls([p for p in good if p not in bad], sorted(bad))

    def check(self) -> None:
        if len(self.goods) < MIN_GOODS:
            raise RetrainError(f"{len(self.goods)} good samples: at least {MIN_GOODS} are needed to train, calibrate "
                               f"and validate (100 or more give a threshold you can trust)")


@dataclass
class Plan:
    """How the samples are shared out (seeded, so a re-run shares them the same way)."""

    dataset: MVTecSet
    held_goods: list[Path]
    held_defects: list[Path]
    anomaly_fraction: float


def plan(samples: Samples, seed: int = 0) -> Plan:
    samples.check()
    rng = np.random.default_rng(seed)
    goods = [samples.goods[i] for i in rng.permutation(len(samples.goods))]
    n_val = max(MIN_VALIDATION_GOODS, round(VALIDATION_SHARE * len(goods)))
    held_goods, train_goods = sorted(goods[:n_val]), sorted(goods[n_val:])
    defects = [samples.defects[i] for i in rng.permutation(len(samples.defects))]
    held_defects, train_defects = sorted(defects[::2]), sorted(defects[1::2])
    test = [TestItem(p, GOOD) for p in held_goods] + [TestItem(p, "defect") for p in held_defects]
    dataset = MVTecSet(Path(samples.goods[0]).parent, train_goods, [(p, "defect") for p in train_defects], test)
    # G = a / (n + a) over the goods that training keeps once its calibration slice is set aside, so
    # that the split draws every training-side defect (a / (n + a) over all of them drew three in four).
    n_fit = len(train_goods) - calibration_count(len(train_goods))
    fraction = len(train_defects) / (n_fit + len(train_defects)) if train_defects else 0.0
    return Plan(dataset, held_goods, held_defects, fraction)


@dataclass
class Validation:
    """A model on the held-out samples: the operator's figures."""

    good_scores: np.ndarray                # normalised, at the model's own calibration
    defect_scores: np.ndarray
    calibration: Calibration
    examples: list[FrameResult] = field(default_factory=list)
    raw_good: np.ndarray = field(default_factory=lambda: np.zeros(0))
    raw_defect: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def auroc(self) -> float | None:
        if not len(self.raw_good) or not len(self.raw_defect):
            return None
        labels = np.r_[np.zeros(len(self.raw_good), bool), np.ones(len(self.raw_defect), bool)]
        return auroc(labels, np.r_[self.raw_good, self.raw_defect])

    def rates(self, threshold: float | None = None) -> tuple[float, float | None]:
        """(false-alarm rate on goods, recall on defects or None) at a raw threshold (default: calibrated)."""
        t = self.calibration.threshold if threshold is None else threshold
        far, recall = rates_at(t, self.raw_good, self.raw_defect if len(self.raw_defect) else self.raw_good)
        return far, recall if len(self.raw_defect) else None

    def figures(self) -> dict[str, Any]:
        far, recall = self.rates()
        return {"image_auroc": self.auroc, "false_alarm_rate": far, "recall": recall,
                "n_validation_good": len(self.raw_good), "n_validation_defect": len(self.raw_defect)}


def validate(inspector: Inspector, goods: Sequence[Path], defects: Sequence[Path], *,
             progress: ProgressCallback | None = None) -> Validation:
    """Inspect the held-out samples as ``inspect`` would."""
    paths = [*goods, *defects]
    results: dict[int, FrameResult] = {}
    for i, result in inspect_files(inspector, paths, progress=progress, stage="validate"):
        if result.error is None:
            results[i] = result
    good = [results[i] for i in range(len(goods)) if i in results]
    bad = [results[i] for i in range(len(goods), len(paths)) if i in results]
    if not good:
        raise RetrainError("none of the held-out good samples could be inspected")
    worst_goods = sorted(good, key=lambda r: -r.score)[: EXAMPLES // 2]
    by_score = sorted(bad, key=lambda r: -r.score)
    defects_shown = by_score[: EXAMPLES // 4] + by_score[-(EXAMPLES // 4):] if len(by_score) > EXAMPLES // 2 \
        else by_score
    cal = inspector.calibration
    return Validation(np.array([r.normalised for r in good]), np.array([r.normalised for r in bad]), cal,
                      [*worst_goods, *defects_shown], np.array([r.score for r in good]),
                      np.array([r.score for r in bad]))


@dataclass
class RetrainResult:
    trained: TrainedModel
    plan: Plan
    validation: Validation
    seconds: float


def retrain(samples: Samples, *, method: str = "patchcore", preset: str = "balanced", seed: int = 0,
            device: str = "auto", surface: str | None = None, mirror_images: bool = False,
            progress: ProgressCallback | None = None,
            should_cancel: Callable[[], bool] | None = None) -> RetrainResult:
    """Train on the samples with a preset (and, for the memory bank, a surface: by default chosen with
    the training share of the labelled defects, ``auto``; and with ``mirror_images``, for parts that
    may lie turned or mirrored, the good samples' mirror images too) and validate on the held-out
    ones; nothing is written."""
    if preset not in PRESETS:
        raise RetrainError(f"unknown preset {preset!r}: {', '.join(PRESETS)}")
    if surface is None:
        surface = AUTO if applies_to(method) else "parts"
    problem = check_surface(surface, method)
    if problem:
        raise RetrainError(problem)
    if mirror_images and not applies_to(method):
        raise RetrainError(f"mirror images are for the memory bank ({', '.join(SURFACE_METHODS)}), not {method!r}")
    p = PRESETS[preset]
    shares = plan(samples, seed)
    t0 = time.perf_counter()

    def report(update: Progress) -> None:
        if should_cancel is not None and should_cancel():
            raise TrainingCancelled(f"retraining cancelled during {update.stage}")
        if progress is not None:
            progress(update)

    import models

    cls = models.get_method(method)
    opts = TrainOptions(data=shares.dataset.root, method=method, anomaly_fraction=shares.anomaly_fraction,
                        seed=seed, device=device)
    if cls.defaults.size is None:
        opts.scale = p.scale
    else:
        opts.epochs = max(1, round(cls.defaults.epochs * p.epochs_share))
    if cls.defaults.size is None and not cls.gradient_free:
        opts.epochs = max(1, round(cls.defaults.epochs * p.epochs_share))
    opts.surface, opts.flips = surface, mirror_images
    try:
        trained = train_model(opts, dataset=shares.dataset, progress=report, should_cancel=should_cancel)
        validation = validate(trained.inspector(), shares.held_goods, shares.held_defects, progress=report)
    except DatasetError as exc:
        raise RetrainError(str(exc)) from exc
    trained.metadata["metrics"] = validation.figures()
    trained.metadata["training"]["preset"] = preset
    return RetrainResult(trained, shares, validation, time.perf_counter() - t0)


def estimate_seconds(samples: Samples, *, method: str = "patchcore", preset: str = "balanced",
                     device: str = "auto", surface: str = "parts", mirror_images: bool = False) -> float:
    """Training time on this machine and device, from a probe: the backbone (or, for a tile method,
    a few training steps) timed on two of the samples, scaled to the images and steps the run will
    take.  Rough (decoding, calibration and the coreset are estimated with the backbone's figure)."""
    import torch

    import models

    from ..detect.device import resolve_device
    from ..detect.scoring import whole_images
    from ..learn.backbones import pretrained_backbone
    from ..learn.datasets import load_images
    from .jobs import HEAD_GOODS, MIRRORS, build_detector, pseudo_count

    cls = models.get_method(method)
    p = PRESETS[preset]
    n = len(samples.goods) + len(samples.defects)
    dev = resolve_device(device)
    probe = load_images(samples.goods[:2], scale=p.scale if cls.defaults.size is None else 1.0).images
    if not probe:
        return 0.0
    if cls.defaults.size is None:
        detector = build_detector(cls, None, 3, {})
        backbone = detector.patch_features.backbone
        backbone.load_weights(pretrained_backbone(backbone.name, backbone.stages).state_dict())
        detector.to(dev)
        whole_images(detector, detector.features, probe[:1])                 # warm-up
        t0 = time.perf_counter()
        maps = whole_images(detector, detector.features, probe)
        per_image = (time.perf_counter() - t0) / len(probe)
        if cls.gradient_free:                       # + the coreset and calibration, once per fit
            views = 1 + len(MIRRORS) if mirror_images else 1
            return per_image * n * (views + 0.3 * fits_for(surface, len(samples.defects) // 2))
        painted = pseudo_count(min(n, HEAD_GOODS)) if detector.wants_pseudo_anomalies else 0
        images = min(n, HEAD_GOODS) + painted + n
        steps = max(1, round(cls.defaults.epochs * p.epochs_share)) * cls.defaults.steps_per_epoch
        per_form, per_step = _time_head(detector, maps, cls.defaults.batch_size, dev)
        return (per_image + per_form) * images + per_step * steps
    detector = build_detector(cls, cls.defaults.size, 3, {}).to(dev)
    detector.make_optimizers()
    batch = models.TrainBatch(torch.rand(cls.defaults.batch_size, 3, cls.defaults.size, cls.defaults.size,
                                         device=dev) * 2 - 1)
    detector.training_step(batch, epoch=1, epochs=1)
    t0 = time.perf_counter()
    for _ in range(3):
        detector.training_step(batch, epoch=1, epochs=1)
    per_step = (time.perf_counter() - t0) / 3
    steps = max(1, round(cls.defaults.epochs * p.epochs_share)) * cls.defaults.steps_per_epoch
    return per_step * steps + 0.01 * n


def _time_head(detector, maps: list, batch_size: int, device) -> tuple[float, float]:
    """A feature head's training costs, timed on the probe's descriptor maps: seconds an image to bring
    its map into the form the steps take (EIDN: the residual against a bank, here of the probe's own
    patches, smaller than training's: the search is a small share), and seconds a step (its batch of
    goods and labelled defects, each the first probe image)."""
    import torch

    import models

    goods = detector.begin_training([maps[0], maps[0].clone()])
    t0 = time.perf_counter()
    detector.training_form(maps, [None] * len(maps))
    per_form = (time.perf_counter() - t0) / len(maps)
    x = goods[0][None].expand(batch_size, -1, -1, -1).contiguous().to(device)
    batch = models.TrainBatch(x, x, torch.ones(batch_size, dtype=torch.bool, device=device),
                              torch.zeros(batch_size, 1, *x.shape[-2:], device=device))
    detector.make_optimizers()
    for _ in range(2):                         # warm-up: the optimiser's first steps load and allocate
        detector.training_step(batch, epoch=1, epochs=1)
    t0 = time.perf_counter()
    for _ in range(3):
        detector.training_step(batch, epoch=1, epochs=1)
    return per_form, (time.perf_counter() - t0) / 3


def compare_active(result: RetrainResult, registry: Registry, *, fallback: Path | None = None,
                   progress: ProgressCallback | None = None) -> tuple[str, Validation] | None:
    """The active model — or, without one, ``fallback`` (the model in use) — on the same held-out
    samples: (its name, its validation); None when there is none or it cannot load."""
    from ..modelstore.modelfile import ModelFileError
    from .inspection import InspectorSettings, load_inspector

    version = registry.active()
    path = registry.path_of(version) if version is not None else fallback
    if path is None:
        return None
    name = f"{version.id} {version.name}" if version is not None else Path(path).stem
    try:
        inspector, _ = load_inspector(path, InspectorSettings(device="cpu"))
    except ModelFileError:
        return None
    return name, validate(inspector, result.plan.held_goods, result.plan.held_defects, progress=progress)


def register(result: RetrainResult, registry: Registry, *, name: str | None = None, activate: bool = False,
             threshold: float | None = None) -> Version:
    """Record the new model as a version (activated or not); a threshold the operator moved replaces
    the calibrated one."""
    trained = result.trained
    metadata = dict(trained.metadata)
    if threshold is not None and threshold != trained.calibration.threshold:
        calibration = dataclasses.replace(trained.calibration, threshold=float(threshold), rule="manual",
                                          target_false_alarm_rate=None)
        metadata["calibration"] = calibration.to_dict()
        metadata["metrics"] = {**metadata["metrics"], **dict(zip(
            ("false_alarm_rate", "recall"), result.validation.rates(threshold), strict=True))}
    registry.root.mkdir(parents=True, exist_ok=True)
    staged = registry.root / f".wizard-{time.time_ns()}.safetensors"
    try:
        save_model(staged, trained.detector, metadata)
        return registry.add(staged, name=name, made_from="retraining wizard", activate=activate, move=True)
    finally:
        staged.unlink(missing_ok=True)
