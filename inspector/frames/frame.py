"""The unit of work, ``Frame``, and the typed status a source reports while it runs."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Frame:
    """One image to inspect; ``image`` is None when it could not be read, and ``error`` says why."""

    image: np.ndarray | None     # uint8 BGR (H, W, 3)
    item: str                    # unique within a run: the file's path, or "<camera>#<frame number>"
    index: int                   # position in the source (0-based; a resumed folder run keeps the original)
    timestamp: float             # time.monotonic() when captured or decoded
    error: str | None = None
    #: Work done ahead on the decoding thread (``FolderSource(prepare=...)``), e.g. the cut tiles.
    prepared: dict[str, Any] = field(default_factory=dict)


class SourceState(enum.Enum):
    OPENING = "opening"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    ENDED = "ended"            # the source ran to its end: the last file, the end of a video
    LOST = "lost"              # a live stream that did not come back after its reconnect attempts
    FAILED = "failed"          # a read error or a driver failure ended it before its end


@dataclass(frozen=True)
class SourceStatus:
    """What a source is doing, reported to ``on_status`` each time it changes."""

    state: SourceState
    detail: str = ""               # why it is lost or failed
    attempt: int = 0               # reconnecting: this attempt ...
    attempts: int | None = None    # ... of these (None: for ever)
    delay_s: float = 0.0           # reconnecting: in this many seconds
    frames_lost: int = 0           # frames that could not be read (a damaged video file)

    @property
    def failed(self) -> bool:
        """The source stopped before its end: a run reading it did not see everything."""
        return self.state in (SourceState.LOST, SourceState.FAILED)

    def describe(self) -> str:
        if self.state is SourceState.RECONNECTING:
            limit = "" if self.attempts is None else f"/{self.attempts}"
            return f"reconnecting (attempt {self.attempt}{limit}) in {self.delay_s:.1f} s"
        if self.detail:
            return f"{self.state.value}: {self.detail}"
        return self.state.value
