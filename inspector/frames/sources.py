"""Where frames come from: cameras, streams and video files, or folders of images.

Every source yields ``Frame``s, one interface for the CLI, the benchmark and the GUI, and reports
what it is doing as a typed ``SourceStatus``:

- ``CameraSource``: OpenCV VideoCapture on a device index, an RTSP/HTTP URL or a video file, read
  by its own capture thread.  Live sources keep only the newest frame, so inspection never falls
  behind the line (the frames it skips are counted as dropped); a video file is read frame by frame
  with nothing dropped.  A live stream that dies is reopened with back-off; one that does not come
  back ends LOST.  A video file whose frames stop arriving before its frame count (a damaged or
  truncated file) is read past the damage where possible and ends FAILED, with the frames lost
  counted — a read error is not taken for the end of the file while the container says more frames
  follow.  (A container without a frame count ends ENDED after reads keep failing, and says so.)
- ``FolderSource``: every entry of a folder (recursively, in a stable order) or a list of files.
  Each becomes a Frame: the decoded image, or no image and the reason (``frames.listing``).  Images
  are decoded ahead by a small thread pool, where an optional ``prepare`` step (cutting tiles,
  making thumbnails) runs too.  Decoding ahead is bounded by bytes, not by a count of files: a
  folder of 20000 x 20000 images is decoded one image at a time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ..base.errors import InspectorError
from .frame import Frame, SourceState, SourceStatus
from .images import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    check_size,
    decode,
    decode_workers,
    is_image_file,
    read_header,
    to_bgr8,
)
from .listing import ALREADY_RECORDED, Entry, display_name, walk

log = logging.getLogger(__name__)

#: Decoded images waiting for the inspector, at most (one image larger than this is still read).
DEFAULT_DECODE_BUDGET = 512 * 2**20


class SourceError(InspectorError):
    """A source that cannot be opened (no such camera, URL not answering, empty or missing folder)."""


StatusCallback = Callable[[SourceStatus], None]


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
#: A video file's reads that may fail in a row before the file is given up (damage is skipped).
MAX_FAILED_READS = 50


def frame_count_slack(total: int) -> int:
    """How far a container's frame count may overstate what a healthy file delivers: some containers
    (MKV, WebM) estimate it from duration x rate."""
    return max(2, total // 100)


def parse_camera_spec(spec: str | int) -> int | str:
    """'0' -> device index 0; a URL or a video file path stays text."""
    if isinstance(spec, int):
        return spec
    text = str(spec).strip()
    return int(text) if text.isdigit() else text


def open_capture(spec: int | str) -> Capture:
    """Open a VideoCapture on a device index, URL or file, with timeouts for network streams."""
    if isinstance(spec, str):
        try:
            spec.encode("utf-8")
        except UnicodeEncodeError:      # OpenCV's binding crashes on such a path: refuse it first
            raise SourceError(f"{display_name(spec)}: OpenCV cannot open a video whose path is not valid "
                              f"UTF-8; rename the file or its folder") from None
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
    through ``on_status``; then it ends LOST.  A video file ends ENDED at its end, FAILED when
    frames before its end could not be read (``frames_lost``).
    """

    def __init__(self, spec: int | str, *, keep_latest: bool | None = None,
                 reconnect_attempts: int | None = 5, max_backoff_s: float = 8.0,
                 opener: Callable[[int | str], Capture] = open_capture,
                 on_status: StatusCallback | None = None) -> None:
        self.spec = parse_camera_spec(spec)
        self.name = describe_camera(self.spec)
        self.is_file = isinstance(self.spec, str) and "://" not in self.spec and Path(self.spec).is_file()
        self.keep_latest = (not self.is_file) if keep_latest is None else keep_latest
        self.reconnect_attempts = reconnect_attempts
        self.max_backoff_s = max_backoff_s
        self._opener = opener
        self._on_status = on_status
        self.status = SourceStatus(SourceState.OPENING)
        self.dropped = 0
        self.captured = 0
        self.frames_lost = 0
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
        self._set_status(SourceStatus(SourceState.RUNNING))
        return cap

    def _set_status(self, status: SourceStatus) -> None:
        self.status = status
        log.info("%s: %s", self.name, status.describe())
        if self._on_status is not None:
            self._on_status(status)

    def _reconnect(self) -> bool:
        """Reopen a dead live stream with back-off; False when the attempts are spent or we stop."""
        self._cap.release()
        attempt, delay = 0, 0.5
        while not self._stop.is_set():
            attempt += 1
            if self.reconnect_attempts is not None and attempt > self.reconnect_attempts:
                self._set_status(SourceStatus(
                    SourceState.LOST, f"no frames after {self.reconnect_attempts} reconnect attempts"))
                return False
            self._set_status(SourceStatus(SourceState.RECONNECTING, attempt=attempt,
                                          attempts=self.reconnect_attempts, delay_s=delay))
            if self._stop.wait(delay):
                return False
            cap = self._opener(self.spec)
            if cap.isOpened():
                self._cap = cap
                self.reconnects += 1
                self._set_status(SourceStatus(SourceState.RUNNING))
                return True
            cap.release()
            delay = min(delay * 2, self.max_backoff_s)
        return False

    def _file_end(self, delivered: int) -> SourceStatus:
        """How a video file ended: at its end, or short of its frame count (damaged or truncated).

        Without a frame count in the container, reads that keep failing are taken for the end (after
        ``MAX_FAILED_READS`` tries), and the status says the count could not be checked.
        """
        if self.total is None:
            return SourceStatus(SourceState.ENDED, "the file gives no frame count to check its end against")
        self.frames_lost = max(0, self.total - delivered)
        if self.frames_lost <= frame_count_slack(self.total):
            return SourceStatus(SourceState.ENDED, frames_lost=self.frames_lost)
        return SourceStatus(SourceState.FAILED, f"{self.frames_lost} of {self.total} frames could not be read "
                                                f"(damaged or truncated file)", frames_lost=self.frames_lost)

    def _read_file_frame(self, delivered: int) -> np.ndarray | None:
        """The next frame of a video file; None at its end.  Read errors are retried: decoders skip
        damaged data and go on with the next frame that decodes."""
        for _ in range(MAX_FAILED_READS):
            ok, img = self._cap.read()
            if ok and img is not None:
                return img
            if self.total is not None and delivered >= self.total:
                return None
        return None

    def _run(self) -> None:
        index = 0
        try:
            while not self._stop.is_set():
                if self.is_file:
                    img = self._read_file_frame(index)
                    if img is None:
                        self._set_status(self._file_end(index))
                        break
                else:
                    ok, img = self._cap.read()
                    if not ok or img is None:
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
            self._set_status(SourceStatus(SourceState.FAILED, f"{type(exc).__name__}: {exc}"))
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


class DecodeBudget:
    """Bytes of decoded images alive at once, shared by the decoding threads.

    A decode waits until its bytes fit, except the one the consumer is waiting for (the *head*):
    it always goes ahead, so one image larger than the budget is still read and nothing deadlocks.
    Bytes come back when the decoded image is freed (a weakref finalizer), wherever that happens.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._head = 0
        self._closed = False
        self._cond = threading.Condition()

    def acquire(self, nbytes: int, seq: int) -> bool:
        """Wait until ``nbytes`` fit (or ``seq`` is the head); False when the budget was closed."""
        with self._cond:
            while not self._closed and not (self.used + nbytes <= self.limit or seq <= self._head):
                self._cond.wait()
            if self._closed:
                return False
            self.used += nbytes
            self.peak = max(self.peak, self.used)
            return True

    def charge(self, nbytes: int) -> None:
        """Count bytes that already exist (work prepared from a decoded image): no waiting."""
        with self._cond:
            self.used += nbytes
            self.peak = max(self.peak, self.used)

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.used -= nbytes
            self._cond.notify_all()

    def advance(self, seq: int) -> None:
        """The consumer now waits for item ``seq``."""
        with self._cond:
            self._head = seq
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _arrays(value) -> Iterator[np.ndarray]:
    """The numpy arrays in a frame's prepared work (nested in dicts, tuples and lists)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _arrays(item)
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _arrays(item)


def _reason(exc: Exception, path: str) -> str:
    return str(exc).removeprefix(f"{path}: ").removeprefix(f"{display_name(path)}: ")


class FolderSource:
    """Every entry of a folder (or a list of files) as a Frame, decoded ahead by a small thread pool.

    ``skip`` names items already done (a resumed run): they are neither read nor yielded, and
    the others keep the index they have in the whole listing.  ``skipped`` counts what was left
    out, by reason; ``entries_listed`` = ``total`` + the skipped ones.
    """

    def __init__(self, paths: str | Path | Iterable[str | Path], *, skip: Iterable[str] = (),
                 workers: int | None = None, ahead: int | None = None,
                 prepare: Callable[[Frame], None] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 memory_budget: int = DEFAULT_DECODE_BUDGET) -> None:
        if isinstance(paths, str | Path):
            entries = self._list(os.fspath(paths))
            self.name = os.fspath(paths)
        else:
            entries = [Entry(os.fspath(p)) for p in paths]
            self.name = f"{len(entries)} files"
        done = set(skip)
        self.entries_listed = len(entries)
        self.skipped: Counter[str] = Counter()
        self.items: list[tuple[int, Entry]] = []
        for index, entry in enumerate(entries):
            if entry.skip is not None:
                self.skipped[entry.skip] += 1
            elif entry.path in done:
                self.skipped[ALREADY_RECORDED] += 1
            else:
                self.items.append((index, entry))
        if entries and not self.items and not self.skipped[ALREADY_RECORDED]:
            reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.items())
            raise SourceError(f"{display_name(self.name)}: nothing to inspect ({reasons})")
        self.total = len(self.items)
        self.workers = workers or decode_workers()
        self.ahead = ahead or 4 * self.workers
        self.prepare = prepare
        self.max_pixels = max_pixels
        self.memory_budget = memory_budget
        self.dropped = 0
        self.frames_lost = 0
        self.budget_peak = 0
        self.status = SourceStatus(SourceState.RUNNING)

    @staticmethod
    def _list(root: str) -> list[Entry]:
        try:
            st = os.stat(root)
        except OSError as exc:
            raise SourceError(f"{display_name(root)}: no such file or folder ({exc.strerror})") from exc
        if os.path.isdir(root):
            entries = walk(root)
            if not entries:
                raise SourceError(f"{display_name(root)}: the folder is empty")
            if len(entries) == 1 and entries[0].path == root:
                raise SourceError(f"{display_name(root)}: {entries[0].error}")
            return entries
        if not os.path.isfile(root):
            raise SourceError(f"{display_name(root)}: not a folder or a file (mode {st.st_mode:o})")
        return [Entry(root)]

    def _decode(self, seq: int, index: int, entry: Entry, budget: DecodeBudget) -> Frame:
        path = entry.path
        if entry.error is not None:
            return Frame(None, path, index, time.monotonic(), entry.error)
        try:
            header = read_header(path)
            check_size(header, path, self.max_pixels)
        except ImageReadError as exc:
            return Frame(None, path, index, time.monotonic(), _reason(exc, path))
        nbytes = header.decoded_bytes
        if not budget.acquire(nbytes, seq):
            return Frame(None, path, index, time.monotonic(), "not read: the run stopped")
        try:
            image = decode(path, header)
        except ImageReadError as exc:
            budget.release(nbytes)
            return Frame(None, path, index, time.monotonic(), _reason(exc, path))
        except MemoryError:
            budget.release(nbytes)
            return Frame(None, path, index, time.monotonic(),
                         f"not enough memory to decode {header.width}x{header.height} pixels")
        except Exception as exc:  # one file must never stop a folder, whatever its decoder raises
            budget.release(nbytes)
            log.exception("decoding %s failed", display_name(path))
            return Frame(None, path, index, time.monotonic(), f"cannot decode ({type(exc).__name__}: {exc})")
        weakref.finalize(image, budget.release, nbytes)
        frame = Frame(image, path, index, time.monotonic())
        if self.prepare is not None:
            try:
                self.prepare(frame)
            except Exception:  # the inspector does the work itself and reports what fails
                log.exception("preparing %s failed", display_name(path))
            for array in _arrays(frame.prepared):      # cut tiles can outweigh the image: counted too
                budget.charge(array.nbytes)
                weakref.finalize(array, budget.release, array.nbytes)
        return frame

    def __iter__(self) -> Iterator[Frame]:
        budget = DecodeBudget(self.memory_budget)
        pending: deque[tuple[int, Future[Frame]]] = deque()
        items = enumerate(self.items)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode") as pool:
            try:
                while True:
                    while len(pending) < self.ahead and (nxt := next(items, None)) is not None:
                        seq, (index, entry) = nxt
                        pending.append((seq, pool.submit(self._decode, seq, index, entry, budget)))
                    if not pending:
                        break
                    seq, future = pending.popleft()
                    budget.advance(seq)
                    frame = future.result()
                    yield frame
                    # Drop our references before decoding on: the consumer decides how long the image lives.
                    del frame, future
            finally:
                budget.close()
                for _, future in pending:
                    future.cancel()
                self.budget_peak = budget.peak
        self.status = SourceStatus(SourceState.ENDED)

    def close(self) -> None:
        """Nothing to release: the decode pool lives only while iterating."""


Source = CameraSource | FolderSource


def _is_image(path: Path) -> bool:
    if is_image_file(path):
        return True
    try:
        read_header(path)
    except ImageReadError:
        return False
    return True


def open_source(spec: str, *, skip: Iterable[str] = (), on_status: StatusCallback | None = None,
                reconnect_attempts: int | None = 5, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Source:
    """A folder or image file -> FolderSource; a video file, camera index or URL -> CameraSource."""
    path = Path(spec)
    if path.is_dir() or (path.is_file() and _is_image(path)):
        return FolderSource(spec, skip=skip, max_pixels=max_pixels)
    if path.exists() and not path.is_file():     # a FIFO, socket or device node: reading one may wait for ever
        raise SourceError(f"{display_name(spec)}: not a regular file, folder, camera index or URL")
    parsed = parse_camera_spec(spec)
    if isinstance(parsed, str) and "://" not in parsed and not path.exists():
        raise SourceError(f"{display_name(spec)}: no such file or folder (and not a camera index or URL)")
    return CameraSource(parsed, on_status=on_status, reconnect_attempts=reconnect_attempts)
