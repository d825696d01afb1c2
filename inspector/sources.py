"""Where frames come from: cameras, streams and video files, or folders of images.

Every source yields ``Frame``s, one interface for the CLI, the benchmark and the GUI:

- ``CameraSource``: OpenCV VideoCapture on a device index, an RTSP/HTTP URL or a video file, read
  by its own capture thread.  Live sources keep only the newest frame, so inspection never falls
  behind the line (the frames it skips are counted as dropped); a video file is read frame by frame
  with nothing dropped.  A live stream that dies is reopened with back-off, reported as a status.
- ``FolderSource``: image files (a folder, recursively and sorted, or a list), decoded ahead in a
  small thread pool, where an optional ``prepare`` step (cutting tiles, making thumbnails) runs
  too, in parallel rather than on the inspecting thread.  Batch mode loses nothing: an unreadable
  file becomes a Frame with an error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from .datasets import default_workers, list_images
from .images import ImageReadError, is_image_file, read_image, to_bgr8

log = logging.getLogger(__name__)


class SourceError(Exception):
    """A source that cannot be opened (no such camera, URL not answering, unreadable file)."""


@dataclass
class Frame:
    """One image to inspect; ``image`` is None when it could not be read, and ``error`` says why."""

    image: np.ndarray | None     # uint8 BGR (H, W, 3)
    item: str                    # unique within a run: the file's path, or "<camera>#<frame number>"
    index: int                   # position in the source (0-based)
    timestamp: float             # time.monotonic() when captured or decoded
    error: str | None = None
    #: Work done ahead on the decoding thread (``FolderSource(prepare=...)``), e.g. the cut tiles.
    prepared: dict[str, Any] = field(default_factory=dict)


class Capture(Protocol):
    """What ``CameraSource`` needs of a ``cv2.VideoCapture`` (tests pass stand-ins)."""

    def isOpened(self) -> bool: ...  # noqa: N802  (OpenCV's names)
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


class FrameClock:
    """Paces a simulated camera: ``wait`` returns at most ``fps`` times a second, like a sensor's clock.

    A late caller is not paid back with a burst: the clock never runs more than one period behind.
    """

    def __init__(self, fps: float) -> None:
        if fps <= 0:
            raise ValueError(f"frame rate must be positive, got {fps}")
        self.fps = fps
        self.period = 1.0 / fps
        self.next_due = time.monotonic()

    def wait(self) -> None:
        delay = self.next_due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.next_due = max(self.next_due + self.period, time.monotonic() - self.period)


#: How long opening or reading a network stream may hang before it counts as failed.
NETWORK_TIMEOUT_MS = 5000


def parse_camera_spec(spec: str | int) -> int | str:
    """'0' -> device index 0; a URL or a video file path stays text."""
    if isinstance(spec, int):
        return spec
    text = str(spec).strip()
    return int(text) if text.isdigit() else text


def open_capture(spec: int | str) -> Capture:
    """Open a VideoCapture on a device index, URL or file, with timeouts for network streams."""
    if isinstance(spec, str) and "://" in spec:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS]
        return cv2.VideoCapture(spec, cv2.CAP_FFMPEG, params)
    return cv2.VideoCapture(spec)


def describe_camera(spec: int | str) -> str:
    return f"camera {spec}" if isinstance(spec, int) else str(spec)


class CameraSource:
    """Frames from OpenCV VideoCapture, read by a capture thread.

    ``keep_latest`` (default: True for cameras and URLs, False for video files): hold only the
    newest frame and count the ones replaced before they were taken as dropped.  Otherwise frames
    wait in a short queue and the capture thread waits for the consumer (nothing dropped).

    When a live stream stops delivering, the source reopens it after 0.5, 1, 2, 4 ... s (at most
    ``max_backoff_s``), ``reconnect_attempts`` times (None: for ever), reporting each attempt
    through ``on_status``; then it ends cleanly.  The end of a video file is a clean end.
    """

    def __init__(self, spec: int | str, *, keep_latest: bool | None = None,
                 reconnect_attempts: int | None = 5, max_backoff_s: float = 8.0,
                 opener: Callable[[int | str], Capture] = open_capture,
                 on_status: Callable[[str], None] | None = None) -> None:
        self.spec = parse_camera_spec(spec)
        self.name = describe_camera(self.spec)
        self.is_file = isinstance(self.spec, str) and "://" not in self.spec and Path(self.spec).is_file()
        self.keep_latest = (not self.is_file) if keep_latest is None else keep_latest
        self.reconnect_attempts = reconnect_attempts
        self.max_backoff_s = max_backoff_s
        self._opener = opener
        self._on_status = on_status
        self.status = "opening"
        self.dropped = 0
        self.captured = 0
        self.reconnects = 0
        self._queue: deque[Frame] = deque(maxlen=1 if self.keep_latest else 4)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ended = False
        self._cap = self._open_first()
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT) if self.is_file else 0
        self.total: int | None = int(count) if count and count > 0 else None
        self._thread = threading.Thread(target=self._run, name=f"capture {self.name}", daemon=True)
        self._thread.start()

    # -- capture thread ---------------------------------------------------------------------------
    def _open_first(self) -> Capture:
        cap = self._opener(self.spec)
        if not cap.isOpened():
            cap.release()
            hint = (" (is it plugged in? try another index)" if isinstance(self.spec, int)
                    else " (check the address and that the stream is running)" if "://" in str(self.spec)
                    else " (not a video format OpenCV can read)")
            raise SourceError(f"cannot open {self.name}{hint}")
        self._set_status("running")
        return cap

    def _set_status(self, status: str) -> None:
        self.status = status
        log.info("%s: %s", self.name, status)
        if self._on_status is not None:
            self._on_status(status)

    def _reconnect(self) -> bool:
        """Reopen a dead live stream with back-off; False when the attempts are spent or we stop."""
        self._cap.release()
        attempt, delay = 0, 0.5
        while not self._stop.is_set():
            attempt += 1
            if self.reconnect_attempts is not None and attempt > self.reconnect_attempts:
                self._set_status(f"lost: no frames after {self.reconnect_attempts} reconnect attempts")
                return False
            limit = "" if self.reconnect_attempts is None else f"/{self.reconnect_attempts}"
            self._set_status(f"reconnecting (attempt {attempt}{limit}) in {delay:.1f} s")
            if self._stop.wait(delay):
                return False
            cap = self._opener(self.spec)
            if cap.isOpened():
                self._cap = cap
                self.reconnects += 1
                self._set_status("running")
                return True
            cap.release()
            delay = min(delay * 2, self.max_backoff_s)
        return False

    def _run(self) -> None:
        index = 0
        try:
            while not self._stop.is_set():
                ok, img = self._cap.read()
                if not ok or img is None:
                    if self.is_file:
                        self._set_status("ended")
                        break
                    if not self._reconnect():
                        break
                    continue
                frame = Frame(to_bgr8(img), f"{self.name}#{index}", index, time.monotonic())
                index += 1
                with self._cond:
                    if not self.keep_latest:
                        while len(self._queue) == self._queue.maxlen and not self._stop.is_set():
                            self._cond.wait(0.1)
                    elif self._queue:
                        self.dropped += 1
                    self._queue.append(frame)
                    self.captured += 1
                    self._cond.notify_all()
        except Exception as exc:  # a driver error must end the source, never hang the consumer
            log.exception("capture from %s failed", self.name)
            self._set_status(f"failed: {type(exc).__name__}: {exc}")
        finally:
            self._cap.release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    # -- consumer ---------------------------------------------------------------------------------
    def next_frame(self, timeout: float | None = None) -> Frame | None:
        """The next frame (the newest, in live mode); None when the source has ended or on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._queue:
                if self._ended:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(0.1 if remaining is None else min(remaining, 0.1))
            frame = self._queue.popleft()
            self._cond.notify_all()
            return frame

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended and not self._queue

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def __enter__(self) -> CameraSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FolderSource:
    """Image files in a stable order, decoded ahead by a small thread pool (OpenCV frees the GIL).

    ``skip`` names files already done (a resumed run): they are neither read nor yielded.
    """

    def __init__(self, paths: str | Path | Iterable[str | Path], *, skip: Iterable[str] = (),
                 workers: int | None = None, ahead: int | None = None,
                 prepare: Callable[[Frame], None] | None = None) -> None:
        if isinstance(paths, str | Path):
            root = Path(paths)
            if root.is_dir():
                files = list_images(root)
                self.name = str(root)
            elif root.is_file():
                files = [root]
                self.name = str(root)
            else:
                raise SourceError(f"{root}: no such file or folder")
        else:
            files = [Path(p) for p in paths]
            self.name = f"{len(files)} files"
        done = set(skip)
        self.skipped = sum(1 for p in files if str(p) in done)
        self.files = [p for p in files if str(p) not in done]
        self.total = len(self.files)
        self.workers = workers or default_workers()
        self.ahead = ahead or 4 * self.workers
        self.prepare = prepare
        self.dropped = 0
        self.status = "running"

    def _decode(self, path: Path, index: int) -> Frame:
        try:
            image, error = read_image(path), None
        except ImageReadError as exc:
            image, error = None, str(exc).removeprefix(f"{path}: ")
        frame = Frame(image, str(path), index, time.monotonic(), error)
        if self.prepare is not None and image is not None:
            self.prepare(frame)
        return frame

    def __iter__(self) -> Iterator[Frame]:
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode") as pool:
            pending: deque[Future[Frame]] = deque()
            files = iter(enumerate(self.files))
            try:
                for index, path in files:
                    pending.append(pool.submit(self._decode, path, index))
                    if len(pending) >= self.ahead:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for fut in pending:
                    fut.cancel()
        self.status = "ended"

    def close(self) -> None:
        """Nothing to release: the decode pool lives only while iterating."""


def open_source(spec: str, *, skip: Iterable[str] = (), on_status: Callable[[str], None] | None = None,
                reconnect_attempts: int | None = 5) -> CameraSource | FolderSource:
    """A folder or image file -> FolderSource; a video file, camera index or URL -> CameraSource."""
    path = Path(spec)
    if path.is_dir() or (path.is_file() and is_image_file(path)):
        return FolderSource(path, skip=skip)
    parsed = parse_camera_spec(spec)
    if isinstance(parsed, str) and "://" not in parsed and not path.exists():
        raise SourceError(f"{spec}: no such file or folder (and not a camera index or URL)")
    return CameraSource(parsed, on_status=on_status, reconnect_attempts=reconnect_attempts)
