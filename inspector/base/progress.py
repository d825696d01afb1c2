"""Progress of long work (loading, training, scoring), reported the same way to the CLI and GUI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    stage: str                 # "load", "train", "score", ...
    done: int
    total: int                 # 0 when unknown (a live camera)
    eta_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[Progress], None]
