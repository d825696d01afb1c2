"""The GUI's background work: live inspection, folder runs and one-off tasks, off the UI thread.

The UI thread only paints and commands.  Each long-lived worker is a QObject moved to its own
QThread; it reports through signals (queued to the UI thread) and is stopped cooperatively
through a flag it checks between frames.  Short tasks (loading a model, writing a report) run in
the global QThreadPool.  Everything is stopped and waited for when the window closes.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PySide6.QtCore import QObject, QRunnable, QThread, QThreadPool, Signal, Slot

from ..app.demo import DEMO_NAME, demo_source
from ..app.inspection import Record, RunSummary, run_inspection, source_kind
from ..detect.pipeline import FrameResult, Inspector
from ..frames.frame import SourceStatus
from ..frames.sources import Source, SourceError, open_source
from ..results.store import ResultStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSpec:
    kind: str          # demo, camera, url, video or folder
    value: str = ""    # camera index, URL or path

    def describe(self) -> str:
        return DEMO_NAME if self.kind == "demo" else f"{self.kind} {self.value}"


def open_live_source(spec: SourceSpec, on_status: Callable[[SourceStatus], None]) -> Source:
    """The source a live view shows; cameras and streams try to reconnect for ever."""
    if spec.kind == "demo":
        return demo_source(on_status=on_status)
    if not spec.value.strip():
        raise SourceError(f"choose a {spec.kind} first")
    if spec.kind == "camera" and not spec.value.strip().isdigit():
        raise SourceError(f"camera index must be a number (0, 1, ...), not {spec.value!r}")
    reconnect = None if spec.kind in ("camera", "url") else 5
    return open_source(spec.value.strip(), on_status=on_status, reconnect_attempts=reconnect)


@dataclass
class LiveUpdate:
    """One inspected frame, ready to show: the display image is already RGB."""

    result: FrameResult
    rgb: np.ndarray
    fps: float
    latency_ms: float
    dropped: int
    worker: LiveWorker          # which worker sent it (a stopped one may still have updates queued)


class LiveWorker(QObject):
    """Runs the inspection loop on a live source and hands the newest result to the view.

    It owns its ``Inspector`` (a copy of the window's): the threshold and region the operator
    moves apply to it at once, and to nothing else.  If the view is still busy with earlier
    results, newer ones are not queued behind them (the display would lag ever further behind the
    line): they are inspected and recorded, and the next one is shown.  NG and ERROR frames are
    recorded in the results database.
    """

    update = Signal(object)      # LiveUpdate
    status = Signal(object)      # SourceStatus: running, reconnecting, lost ...
    failed = Signal(str)
    finished = Signal(object)    # this worker

    # Connect these signals to bound methods of UI objects only: PySide6 runs a lambda connected to
    # a signal of this worker in the worker's own thread, where no widget may be touched.

    def __init__(self, spec: SourceSpec, inspector: Inspector, *, db_path: Path, model_path: str = "",
                 method: str = "") -> None:
        super().__init__()
        self.spec, self.inspector = spec, inspector
        self.db_path, self.model_path, self.method = db_path, model_path, method
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._in_view = 0               # updates sent and not yet shown
        self._lock = threading.Lock()
        self._fps = 0.0
        self._last: float | None = None
        self._source: Source | None = None

    def stop(self) -> None:
        self._stop.set()

    def set_paused(self, paused: bool) -> None:
        (self._paused.set if paused else self._paused.clear)()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def shown(self) -> None:
        """The view calls this when it has drawn an update (from the UI thread)."""
        with self._lock:
            self._in_view = max(0, self._in_view - 1)

    @Slot()
    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a worker must report, never die silently
            log.exception("live inspection failed")
            self.failed.emit(f"live inspection stopped: {exc}")
        finally:
            self._send(self.finished, self)

    def _run(self) -> None:
        try:
            source = open_live_source(self.spec, self.status.emit)
        except SourceError as exc:
            self.failed.emit(str(exc))
            return
        self._source = source
        try:
            with ResultStore(self.db_path) as store:
                run_id = store.start_run(source=self.spec.describe(), kind=source_kind(source),
                                         model=self.model_path, method=self.method,
                                         settings={"tile": self.inspector.tile, "stride": self.inspector.stride,
                                                   "recorded": "NG and ERROR frames"},
                                         threshold=self.inspector.threshold)
                run_inspection(self.inspector, source, store, run_id, record=Record.SAMPLED,
                               should_cancel=self._stop.is_set, is_paused=self._paused.is_set,
                               on_result=self._show)
        finally:
            source.close()          # also when the database could not be opened: free the camera

    def _show(self, result: FrameResult) -> None:
        now = time.monotonic()
        if self._last is not None:
            rate = 1.0 / max(now - self._last, 1e-6)
            self._fps = 0.9 * self._fps + 0.1 * rate if self._fps else rate
        self._last = now
        with self._lock:
            if self._in_view >= 2:
                return
            self._in_view += 1
        if result.image is None:      # an unreadable file in a folder: say so, keep going
            self.shown()
            self._send(self.failed, f"{result.item}: {result.error}")
            return
        rgb = cv2.cvtColor(result.image, cv2.COLOR_BGR2RGB)
        dropped = self._source.dropped if self._source is not None else 0
        self._send(self.update, LiveUpdate(result, rgb, self._fps, result.latency_s * 1000.0, dropped, self))

    def _send(self, signal, value) -> None:
        try:
            signal.emit(value)
        except RuntimeError:          # "Signal source has been deleted": the process is ending without
            self._stop.set()          # closing the window; end the run as cancelled


class BatchWorker(QObject):
    """Inspects a folder into the results database, with progress and cancel.

    Its ``Inspector`` is its own copy, taken when the run starts: the run's verdicts all use the
    threshold it started with, whatever the live view does meanwhile.
    """

    progress = Signal(int, int)          # done, total
    finished = Signal(int, object)       # run id, RunSummary
    failed = Signal(str)

    def __init__(self, folder: Path, inspector: Inspector, *, db_path: Path, model_path: str, method: str,
                 settings: dict[str, Any]) -> None:
        super().__init__()
        self.folder, self.inspector, self.db_path = folder, inspector, db_path
        self.model_path, self.method, self.settings = model_path, method, settings
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    @Slot()
    def run(self) -> None:
        try:
            source = open_source(str(self.folder))
            with ResultStore(self.db_path) as store:
                run_id = store.start_run(source=str(self.folder), kind=source_kind(source), model=self.model_path,
                                         method=self.method, settings=self.settings,
                                         threshold=self.inspector.threshold)
                summary: RunSummary = run_inspection(
                    self.inspector, source, store, run_id,
                    progress=lambda p: self.progress.emit(p.done, p.total), should_cancel=self._cancel.is_set)
            self.finished.emit(run_id, summary)
        except Exception as exc:
            log.exception("folder run failed")
            self.failed.emit(str(exc))


class _TaskSignals(QObject):
    done = Signal(object)
    failed = Signal(str)


class Task(QRunnable):
    """A one-off function run in the thread pool; its result or error comes back by signal."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__()
        self.fn = fn
        self.signals = _TaskSignals()

    @Slot()
    def run(self) -> None:
        try:
            value = self.fn()
        except Exception as exc:
            log.debug("task failed:\n%s", traceback.format_exc())
            self.signals.failed.emit(str(exc))
        else:
            self.signals.done.emit(value)


_RUNNING: set[Task] = set()     # tasks (and so their signal objects) stay alive until they report


def start_task(fn: Callable[[], Any], on_done: Callable[[Any], None], on_failed: Callable[[str], None]) -> Task:
    """Run ``fn`` in the thread pool; ``on_done(result)`` or ``on_failed(message)`` run on the UI thread."""
    task = Task(fn)
    _RUNNING.add(task)
    task.signals.done.connect(on_done)
    task.signals.failed.connect(on_failed)
    task.signals.done.connect(lambda _value: _RUNNING.discard(task))
    task.signals.failed.connect(lambda _message: _RUNNING.discard(task))
    QThreadPool.globalInstance().start(task)
    return task


def start_in_thread(worker: QObject, parent: QObject) -> QThread:
    """Move ``worker`` to a new QThread, start its ``run`` there, and end the thread when it finishes."""
    thread = QThread(parent)
    worker.moveToThread(thread)
    thread.started.connect(worker.run)
    thread.start()
    return thread
