"""The Detector interface every anomaly-detection method implements, and the registry by name.

A detector is an ``nn.Module`` that takes images as float tensors ``(B, C, H, W)`` scaled to
[-1, 1] (BGR, or grey with C = 1) and returns, for each, an anomaly score (higher = more
anomalous) and, where it has one, an anomaly map.  Two kinds:

- tile detectors (``size`` = S): fixed S x S tiles, cut from the frame by the pipeline; maps at
  tile resolution (the pixel methods: AE, AGAD, EDE);
- fully convolutional detectors (``size`` None): any H and W that are multiples of
  ``side_multiple``; maps on a grid of ``map_stride`` pixels (the methods on a frozen backbone's
  patch features).  The pipeline runs them once over the whole region.

Training is driven from outside (the engine in ``inspector.learn.training``) one step at a time,
so that progress, cancel, checkpoints and the time budget work the same way for every method; each
method owns its losses and optimisers because the adversarial methods need several of them.  A
method on features is trained on features the engine computes once per image (``trains_on``); a
memory-bank method is fitted without gradients (``gradient_free``).

The rest of the program asks the registry for a method by name and never imports one by hand.
"""

from __future__ import annotations

import abc
import inspect
import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class TrainBatch:
    """One training step's samples, already on the detector's device.

    ``anomalous`` holds labelled defects and/or synthetic pseudo-anomalies for the methods that use
    them (``Detector.uses_anomalies``); ``anomalous_is_real`` marks which rows are labelled defects.
    ``anomalous_masks`` (B, 1, h, w), where known, marks the anomalous part of each anomalous row
    (pseudo-anomalies are painted with their masks); labelled defects come without one (zeros and
    ``anomalous_is_real``: the method finds the defect itself, e.g. as a multiple-instance bag).

    A method on features gets whole images' patch descriptors (B, D, h, w), padded to the batch's
    largest image: ``normal_valid`` and ``anomalous_valid`` (B, 1, h, w) mark the cells that are
    the image's own.  Tile batches have no padding and leave them None.
    """

    normal: torch.Tensor
    anomalous: torch.Tensor | None = None
    anomalous_is_real: torch.Tensor | None = None
    anomalous_masks: torch.Tensor | None = None
    normal_valid: torch.Tensor | None = None
    anomalous_valid: torch.Tensor | None = None
    #: Passes over the normal training tiles so far, counting this batch's (1 during the first):
    #: a schedule in the paper's epochs (EDE's 1/n) reads this, not the engine's epoch.
    data_pass: int = 1


@dataclass
class Inference:
    """What a detector returns for a batch of tiles.

    scores: ``(B,)`` raw anomaly scores, higher = more anomalous (the map's maximum, for a method
        with a map; the pipeline takes it over the valid part of a padded input itself).
    maps: ``(B, 1, h, w)`` anomaly maps in score units — per pixel for a tile detector, per patch
        (``map_stride`` pixels) for a fully convolutional one — or None for a method without one.
    embeddings: ``(B, l)`` or ``(B, l, h, w)`` latent codes for a method that embeds (EIDN), else None.
    """

    scores: torch.Tensor
    maps: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None


@dataclass(frozen=True)
class TrainingDefaults:
    """The method's own training schedule (from its paper where the paper gives one)."""

    epochs: int
    steps_per_epoch: int
    batch_size: int
    size: int | None          # tile side; None: fully convolutional


class _DetectorMeta(abc.ABCMeta):
    """Records each detector's constructor arguments, defaults filled in, once it is built.

    One place for every method: a model file stores ``hparams()`` and rebuilds the network from
    them, so a method never lists its own arguments a second time.
    """

    def __call__(cls, *args: Any, **kwargs: Any):
        detector = super().__call__(*args, **kwargs)
        bound = inspect.signature(cls.__init__).bind(detector, *args, **kwargs)
        bound.apply_defaults()
        detector._hparams = {k: v for k, v in bound.arguments.items() if k not in _SHAPE_ARGS}
        return detector


#: Constructor arguments that describe the input, stored apart from the hyper-parameters.
_SHAPE_ARGS = ("self", "size", "channels")


class Detector(nn.Module, metaclass=_DetectorMeta):
    """Base class of all detection methods.

    Subclasses set the class attributes, build their networks in ``__init__`` from keyword-only
    hyper-parameters (every one of them with the paper's value as its default), and implement
    ``make_optimizers``, ``training_step`` and ``infer``.
    """

    method: ClassVar[str] = ""
    #: The method learns from anomalous samples (labelled defects, else synthetic pseudo-anomalies).
    uses_anomalies: ClassVar[bool] = False
    #: ... and cannot train without them (EIDN's triplets); AGAD can, from normal samples alone.
    needs_anomalies: ClassVar[bool] = False
    #: Where there are both labelled defects and pseudo-anomalies: the share of a batch's anomalous
    #: samples drawn from the labelled ones (a method may make it a hyper-parameter).
    labelled_share: float = 0.5
    #: ``infer`` returns an anomaly map.
    has_difference_map: ClassVar[bool] = False
    #: What ``training_step`` receives: image tiles ("pixels") or backbone features ("features").
    trains_on: ClassVar[str] = "pixels"
    #: Fitted in one pass by ``fit_features`` (a memory bank) instead of gradient steps.
    gradient_free: ClassVar[bool] = False
    defaults: ClassVar[TrainingDefaults]
    #: Hyper-parameters added after model files of the method were first written, each with the value
    #: that keeps an older file's behaviour: a file without one is rebuilt with that, not today's default.
    legacy_hparams: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, size: int | None, channels: int) -> None:
        super().__init__()
        if size is not None and (size < 16 or size & (size - 1)):
            raise ValueError(f"input size must be a power of two, at least 16 (16, 32, 64, ...), got {size}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (colour), got {channels}")
        self.size = size
        self.channels = channels
        self._hparams: dict[str, Any] = {}
        self.optimizers: list[torch.optim.Optimizer] = []

    def hparams(self) -> dict[str, Any]:
        """The hyper-parameters this detector was built with (recorded by the metaclass)."""
        return dict(self._hparams)

    @classmethod
    def hparam_defaults(cls) -> dict[str, Any]:
        """The method's hyper-parameters and their defaults (the paper's values)."""
        return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name not in _SHAPE_ARGS}

    @property
    def device(self) -> torch.device:
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def fully_convolutional(self) -> bool:
        return self.size is None

    @property
    def side_multiple(self) -> int:
        """Image sides a fully convolutional detector takes are multiples of this (the caller pads)."""
        return 1

    @property
    def map_stride(self) -> int:
        """Input pixels per anomaly-map cell."""
        return 1

    @abc.abstractmethod
    def make_optimizers(self) -> None:
        """Create ``self.optimizers`` (called once, after the module is on its device)."""

    @abc.abstractmethod
    def training_step(self, batch: TrainBatch, *, epoch: int, epochs: int) -> dict[str, float]:
        """One optimisation step; ``epoch`` is 1-based. Returns the losses as plain floats."""

    @abc.abstractmethod
    def infer(self, x: torch.Tensor) -> Inference:
        """Scores (and maps / embeddings) for a batch of tiles, without grad.

        Free of side effects: the caller puts the module in eval mode (``inspector.detect.scoring``
        does, for the duration of the call).
        """

    @property
    def wants_pseudo_anomalies(self) -> bool:
        """Whether the training engine should paint synthetic pseudo-anomalies for this detector."""
        return self.uses_anomalies

    def after_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        """Hook at the end of every epoch (schedules, resets); returns anything worth logging."""
        return {}

    def optimizer_state(self) -> list[dict[str, Any]]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_optimizer_state(self, states: list[dict[str, Any]]) -> None:
        if len(states) != len(self.optimizers):
            raise ValueError("checkpoint holds a different number of optimisers")
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)


class UnknownMethodError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; this one reads as a sentence
        return str(self.args[0])


_METHODS: dict[str, type[Detector]] = {}
#: The detector an operator gets without labelled defects: ``get_method("default")``.
DEFAULT_METHOD = "patchcore"


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make a method available by its name."""
    if not cls.method:
        raise ValueError(f"{cls.__name__} has no method name")
    _METHODS[cls.method] = cls
    return cls


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type[Detector]:
    """The method of this name; ``"default"`` is ``DEFAULT_METHOD``."""
    try:
        return _METHODS[DEFAULT_METHOD if name == "default" else name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; available methods: {', '.join(method_names())} "
            f"(or default: {DEFAULT_METHOD})"
        ) from None


def create(name: str, **kwargs: Any) -> Detector:
    return get_method(name)(**kwargs)
