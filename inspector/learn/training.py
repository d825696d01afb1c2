"""The one training engine every detection method goes through.

The engine owns what is common to all methods: seeding, the device, drawing batches, the epoch /
step loop, progress with an ETA, cancel, a time budget and checkpoints.  A method only supplies
its ``training_step`` (see ``models.base.Detector``).

Reproducibility: every epoch re-seeds torch and numpy from (seed, epoch), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models import Detector, TrainBatch

from ..base.errors import InspectorError
from ..base.progress import Progress, ProgressCallback
from ..detect.tensors import to_tensor

log = logging.getLogger(__name__)


class TrainingCancelled(Exception):
    """Raised when the caller's cancel check answers yes; nothing has been saved as a model."""


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**63


@dataclass
class TrainingData:
    """Training tiles as uint8 (N, S, S, C) arrays.

    ``labelled`` are real defects, ``pseudo`` synthetic pseudo-anomalies; a method that uses
    anomalies gets batches drawn from both, a share ``labelled_share`` from the real ones (all of
    them from whichever pool is not empty when only one is).
    """

    normal: np.ndarray
    labelled: np.ndarray | None = None
    pseudo: np.ndarray | None = None
    labelled_share: float = 0.5

    @property
    def n_labelled(self) -> int:
        return 0 if self.labelled is None else len(self.labelled)

    @property
    def n_pseudo(self) -> int:
        return 0 if self.pseudo is None else len(self.pseudo)


class _BatchSampler:
    """Draws batches from the training data kept on the device as uint8 (no copy per step)."""

    def __init__(self, data: TrainingData, device: torch.device, uses_anomalies: bool, flips: bool,
                 needs_anomalies: bool = False) -> None:
        def put(arr):
            return None if arr is None or len(arr) == 0 else torch.from_numpy(arr).to(device)

        self.device = device
        self.flips = flips
        self.normal = put(data.normal)
        self.labelled = put(data.labelled) if uses_anomalies else None
        self.pseudo = put(data.pseudo) if uses_anomalies else None
        self.share = data.labelled_share if self.pseudo is not None else 1.0
        if needs_anomalies and self.labelled is None and self.pseudo is None:
            raise ValueError("this method learns from anomalies: give labelled defects or pseudo-anomalies")

    def _draw(self, pool: torch.Tensor, n: int) -> torch.Tensor:
        idx = torch.randint(len(pool), (n,), device=self.device)
        x = to_tensor(pool[idx], self.device)
        if self.flips:  # random horizontal and vertical mirror images, per sample
            for dim in (2, 3):
                flip = torch.rand(n, device=self.device).lt(0.5).view(-1, 1, 1, 1)
                x = torch.where(flip, x.flip(dim), x)
        return x

    def __call__(self, batch_size: int) -> TrainBatch:
        normal = self._draw(self.normal, batch_size)
        if self.labelled is None and self.pseudo is None:
            return TrainBatch(normal)
        n_real = 0
        if self.labelled is not None:
            n_real = batch_size if self.pseudo is None else int(torch.rand(batch_size).lt(self.share).sum())
        parts, real = [], []
        if n_real:
            parts.append(self._draw(self.labelled, n_real))
            real.append(torch.ones(n_real, dtype=torch.bool))
        if batch_size - n_real:
            parts.append(self._draw(self.pseudo, batch_size - n_real))
            real.append(torch.zeros(batch_size - n_real, dtype=torch.bool))
        return TrainBatch(normal, torch.cat(parts), torch.cat(real).to(self.device))


@dataclass
class FeatureTrainingData:
    """Patch descriptors (D, h, w) of whole images, for a method trained on a frozen backbone's
    features (computed once: the backbone does not train).

    ``pseudo_masks`` (1, h, w) hold each cell's painted share for the pseudo-anomalous images;
    ``labelled`` real defects come without masks (the method finds the defect in the image).  A
    batch draws a share ``labelled_share`` of its anomalous images from the labelled ones when both
    pools have some.
    """

    normal: list[torch.Tensor]
    pseudo: list[torch.Tensor] = field(default_factory=list)
    pseudo_masks: list[torch.Tensor] = field(default_factory=list)
    labelled: list[torch.Tensor] = field(default_factory=list)
    labelled_share: float = 0.5

    def __post_init__(self) -> None:
        if len(self.pseudo) != len(self.pseudo_masks):
            raise ValueError("every pseudo-anomalous image needs its mask")

    @property
    def n_labelled(self) -> int:
        return len(self.labelled)

    @property
    def n_pseudo(self) -> int:
        return len(self.pseudo)


def _stack_padded(maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (K, h_i, w_i) zero-padded to the largest: (B, K, H, W) and the valid cells (B, 1, H, W)."""
    h = max(m.shape[1] for m in maps)
    w = max(m.shape[2] for m in maps)
    out = maps[0].new_zeros(len(maps), maps[0].shape[0], h, w)
    valid = torch.zeros(len(maps), 1, h, w, dtype=torch.bool, device=maps[0].device)
    for i, m in enumerate(maps):
        out[i, :, :m.shape[1], :m.shape[2]] = m
        valid[i, :, :m.shape[1], :m.shape[2]] = True
    return out, valid


class _FeatureSampler:
    """Draws batches of whole images' features; kept on the device in float16 (no copy per step)."""

    def __init__(self, data: FeatureTrainingData, device: torch.device, uses_anomalies: bool,
                 needs_anomalies: bool) -> None:
        def put(maps):
            return [m.to(device, torch.float16) for m in maps]

        self.device = device
        self.normal = put(data.normal)
        self.pseudo = put(data.pseudo) if uses_anomalies else []
        self.masks = [m.to(device, torch.float16) for m in data.pseudo_masks] if uses_anomalies else []
        self.labelled = put(data.labelled) if uses_anomalies else []
        self.share = data.labelled_share if self.pseudo else 1.0
        if needs_anomalies and not self.pseudo and not self.labelled:
            raise ValueError("this method learns from anomalies: give labelled defects or pseudo-anomalies")

    @staticmethod
    def _pick(pool: list[torch.Tensor], n: int) -> list[int]:
        return torch.randint(len(pool), (n,)).tolist() if n else []

    def __call__(self, batch_size: int) -> TrainBatch:
        normal, normal_valid = _stack_padded([self.normal[i].float() for i in self._pick(self.normal, batch_size)])
        if not self.pseudo and not self.labelled:
            return TrainBatch(normal, normal_valid=normal_valid)
        n_real = 0
        if self.labelled:
            n_real = batch_size if not self.pseudo else int(torch.rand(batch_size).lt(self.share).sum())
        maps, masks, real = [], [], []
        for i in self._pick(self.labelled, n_real):
            maps.append(self.labelled[i].float())
            masks.append(torch.zeros(1, *maps[-1].shape[1:], device=self.device))
            real.append(True)
        for i in self._pick(self.pseudo, batch_size - n_real):
            maps.append(self.pseudo[i].float())
            masks.append(self.masks[i].float())
            real.append(False)
        anomalous, anomalous_valid = _stack_padded(maps)
        anomalous_masks, _ = _stack_padded(masks)
        return TrainBatch(normal, anomalous, torch.tensor(real, device=self.device), anomalous_masks,
                          normal_valid=normal_valid, anomalous_valid=anomalous_valid)


def _sampler(data: TrainingData | FeatureTrainingData, detector: Detector, flips: bool):
    if isinstance(data, FeatureTrainingData):
        return _FeatureSampler(data, detector.device, detector.uses_anomalies, detector.needs_anomalies)
    return _BatchSampler(data, detector.device, detector.uses_anomalies, flips, detector.needs_anomalies)


@dataclass
class TrainConfig:
    epochs: int
    steps_per_epoch: int
    batch_size: int
    seed: int = 0
    #: Mirror samples at random (horizontal and vertical). Off by default: it measured worse for
    #: EIDN on magnetic tiles (README, "EIDN settings").
    flips: bool = False
    time_budget_s: float | None = None
    checkpoint_path: Path | None = None
    resume: bool = False


@dataclass
class TrainReport:
    epochs_done: int
    steps_done: int
    seconds: float
    stopped_by: str                          # "completed" or "time budget"
    resumed_from_epoch: int = 0
    last_losses: dict[str, float] = field(default_factory=dict)


def _save_checkpoint(path: Path, detector: Detector, epoch: int, steps: int, seconds: float) -> None:
    """Model and optimiser state after ``epoch``; written aside and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save({"epoch": epoch, "steps": steps, "seconds": seconds,
                "model": detector.state_dict(), "optimizers": detector.optimizer_state()}, tmp)
    os.replace(tmp, path)


class CheckpointError(InspectorError):
    """A training checkpoint that cannot be resumed from; the message says what to do."""


def _load_checkpoint(path: Path, detector: Detector) -> tuple[int, int, float]:
    """Resume state from a checkpoint, loaded with ``weights_only=True`` (no code can run)."""
    try:
        state = torch.load(path, map_location=detector.device, weights_only=True)
        detector.load_state_dict(state["model"])
        detector.load_optimizer_state(state["optimizers"])
        return int(state["epoch"]), int(state["steps"]), float(state["seconds"])
    except Exception as exc:   # a damaged file can fail in the unpickler, in zip, or in load_state_dict
        raise CheckpointError(f"{path}: the training checkpoint is damaged or from another model "
                              f"({type(exc).__name__}); delete it to train from the start") from exc


def train(detector: Detector, data: TrainingData | FeatureTrainingData, config: TrainConfig, *,
          progress: ProgressCallback | None = None,
          should_cancel: Callable[[], bool] | None = None) -> TrainReport:
    """Train ``detector`` (already on its device) in place, on tiles or on whole images' features.

    Stops when the epochs are done or the time budget is spent (between steps); raises
    ``TrainingCancelled`` when ``should_cancel`` answers True.  With a ``checkpoint_path`` the
    state is saved after every epoch, and ``resume`` continues from the file if it is there.
    """
    sampler = _sampler(data, detector, config.flips)
    detector.make_optimizers()
    start_epoch, steps_done, seconds_before = 0, 0, 0.0
    ckpt = config.checkpoint_path
    if ckpt is not None and config.resume and ckpt.exists():
        start_epoch, steps_done, seconds_before = _load_checkpoint(ckpt, detector)
        log.info("resumed from %s after epoch %d", ckpt, start_epoch)
    total_steps = config.epochs * config.steps_per_epoch
    steps_before = steps_done
    t0 = time.perf_counter()
    losses: dict[str, float] = {}
    stopped_by = "completed"
    epoch = start_epoch
    for epoch in range(start_epoch + 1, config.epochs + 1):
        torch.manual_seed(_epoch_seed(config.seed, epoch))
        detector.train()
        for step in range(1, config.steps_per_epoch + 1):
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled(f"training cancelled in epoch {epoch}, step {step}")
            batch = sampler(config.batch_size)
            batch.data_pass = 1 + steps_done * config.batch_size // len(data.normal)
            losses = detector.training_step(batch, epoch=epoch, epochs=config.epochs)
            steps_done += 1
            elapsed = time.perf_counter() - t0
            if progress is not None:
                eta = elapsed / (steps_done - steps_before) * max(0, total_steps - steps_done)
                if config.time_budget_s is not None:
                    eta = min(eta, max(0.0, config.time_budget_s - seconds_before - elapsed))
                progress(Progress("train", steps_done, total_steps, eta_s=eta,
                                  info={"epoch": epoch, **losses}))
            if config.time_budget_s is not None and seconds_before + elapsed >= config.time_budget_s:
                stopped_by = "time budget"
                break
        losses.update(detector.after_epoch(epoch, config.epochs))
        if ckpt is not None:
            _save_checkpoint(ckpt, detector, epoch, steps_done, seconds_before + time.perf_counter() - t0)
        if stopped_by != "completed":
            log.warning("time budget of %.0f s spent after %d of %d steps",
                        config.time_budget_s, steps_done, total_steps)
            break
    return TrainReport(epochs_done=epoch, steps_done=steps_done,
                       seconds=seconds_before + time.perf_counter() - t0, stopped_by=stopped_by,
                       resumed_from_epoch=start_epoch, last_losses=losses)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch for model initialisation and return the numpy generator for data choices."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
