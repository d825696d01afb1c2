"""The Detector interface every anomaly-detection method implements, and the registry by name.

A detector is an ``nn.Module`` that takes image tiles as float tensors ``(B, C, S, S)`` scaled to
[-1, 1] and returns, for each tile, an anomaly score (higher = more anomalous) and, where the
method reconstructs its input, a per-pixel difference map.  Training is driven from outside (the
engine in ``inspector.training``) one step at a time, so that progress, cancel, checkpoints and the
time budget work the same way for every method; each method owns its losses and optimisers because
the adversarial methods need several of them.

The rest of the program asks the registry for a method by name and never imports one by hand.
"""

from __future__ import annotations

import abc
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class TrainBatch:
    """One training step's samples, already on the detector's device.

    ``anomalous`` holds labelled defects and/or synthetic pseudo-anomalies for the methods that use
    them (``Detector.uses_anomalies``); ``anomalous_is_real`` marks which rows are labelled defects.
    """

    normal: torch.Tensor
    anomalous: torch.Tensor | None = None
    anomalous_is_real: torch.Tensor | None = None


@dataclass
class Inference:
    """What a detector returns for a batch of tiles.

    scores: ``(B,)`` raw anomaly scores, higher = more anomalous.
    maps: ``(B, 1, S, S)`` per-pixel difference maps, or None for a method without one.
    embeddings: ``(B, l)`` latent codes for a method that embeds (EIDN), else None.
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
    size: int


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
    #: ``infer`` returns a per-pixel difference map.
    has_difference_map: ClassVar[bool] = False
    defaults: ClassVar[TrainingDefaults]

    def __init__(self, *, size: int, channels: int) -> None:
        super().__init__()
        if size < 16 or size & (size - 1):
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
        return next(self.parameters()).device

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


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make a method available by its name."""
    if not cls.method:
        raise ValueError(f"{cls.__name__} has no method name")
    _METHODS[cls.method] = cls
    return cls


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type[Detector]:
    try:
        return _METHODS[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; available methods: {', '.join(method_names())}"
        ) from None


def create(name: str, **kwargs: Any) -> Detector:
    return get_method(name)(**kwargs)
