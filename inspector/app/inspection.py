"""An inspection run: a source's frames through an Inspector into the results database.

The one loop for every kind of run — the ``inspect`` command, the pipeline benchmark, the
window's live view and its folder runs: frames are taken from the source (in batches of tiles for
folders and video files, one at a time for live cameras so that latency stays low), inspected,
recorded, and — for anomalous items when an output folder is given — saved as overlay images.
Progress goes to a callback; ``should_cancel`` stops between frames; ``is_paused`` holds the run.

The run's row says truthfully how it ended: "completed" only when the source ran to its end,
"stopped after N items" (``max_frames``), "cancelled", "interrupted" (Ctrl-C), or "failed: <why>" —
a live stream lost for good, a video file that could not be read to its end, or an unexpected error
(which is recorded, then raised).
The summary accounts for every entry of a folder: scored + errors + skipped = entries listed.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

from ..base.atomic import OutputError
from ..base.progress import Progress, ProgressCallback
from ..detect.device import device_name
from ..detect.pipeline import ERROR, NG, OK, FrameResult, Inspector
from ..detect.tiling import Roi, TilingError
from ..frames.frame import Frame
from ..frames.images import write_image
from ..frames.listing import ALREADY_RECORDED, display_name
from ..frames.sources import CameraSource, FolderSource, Source
from ..modelstore.modelfile import calibration_of
from ..results.overlay import render
from ..results.store import CANCELLED, COMPLETED, INTERRUPTED, RUNNING, ResultStore, image_thumbnail
from .engine import load_detector

log = logging.getLogger(__name__)

#: Folders and video files are inspected in batches of at least this many tiles (or BATCH_FRAMES
#: frames, or BATCH_BYTES of pixels): a small batch costs the model nearly as much as a full one
#: (measured on the CPU: 8 tiles of 32 px took 11 ms, 64 tiles 13 ms).
BATCH_TILES = 64
BATCH_FRAMES = 64
BATCH_BYTES = 64 * 2**20
#: How often a waiting run looks at its cancel flag, in seconds.
POLL_S = 0.2


class Record(enum.Enum):
    """Which results a run writes to the database."""

    ALL = "all"
    NOT_OK = "not OK"      # NG and ERROR only
    SAMPLED = "sampled"    # NG and ERROR, and one OK frame in ``OK_SAMPLE_EVERY``: a live camera's record


#: A live run keeps one good frame in this many (what "OK" looked like, without a row per frame).
OK_SAMPLE_EVERY = 100


@dataclass
class InspectorSettings:
    tile: int | None = None
    stride: int | None = None
    roi: Roi | None = None
    device: str = "auto"
    half: bool = False
    engine: str = "auto"          # ``engine.ENGINES``: auto, torch or onnx


def load_inspector(model: str | Path, settings: InspectorSettings) -> tuple[Inspector, dict[str, Any]]:
    """Load a model file (or an ONNX export) on the chosen device and engine, and wrap it with its
    stored calibration.

    A fully convolutional model inspects each frame whole, at the scale and with the smoothing it
    was trained and calibrated with.  A tile model without a tile size in ``settings`` uses the
    tiling its file recommends (one trained on tiles of a larger surface, like the demo's), or
    else inspects each frame as one tile.
    """
    detector, meta = load_detector(model, device=settings.device, engine=settings.engine)
    made_for = meta.get("inspection", {})
    if detector.fully_convolutional:     # a tile size set for tile models does not apply: each frame whole
        inspector = Inspector(detector, calibration_of(meta), roi=settings.roi, half=settings.half,
                              scale=made_for.get("scale", 1.0), smoothing=made_for.get("smoothing", 0.0))
        return inspector, meta
    tile = settings.tile if settings.tile is not None else made_for.get("tile")
    stride = settings.stride if settings.tile is not None else made_for.get("stride")
    inspector = Inspector(detector, calibration_of(meta), tile=tile, stride=stride, roi=settings.roi,
                          half=settings.half)
    return inspector, meta


def run_settings(inspector: Inspector, settings: InspectorSettings) -> dict[str, Any]:
    """What a run records about how it inspected (for the database and the report)."""
    whole = ({"scale": inspector.scale, "smoothing": inspector.smoothing}
             if inspector.detector.fully_convolutional else {})
    return {"tile": inspector.tile, "stride": inspector.stride, **whole, "roi": inspector.roi, "half": settings.half,
            "normalised_threshold": inspector.normalised_threshold,
            "device": device_name(inspector.detector.device),
            "engine": getattr(inspector.detector, "engine", "torch"), "input_size": inspector.detector.size,
            "channels": inspector.detector.channels}


def source_kind(source: Source) -> str:
    if isinstance(source, FolderSource):
        return "folder"
    return "video" if source.is_file else "camera"


@dataclass
class RunSummary:
    run_id: int
    entries: int | None = None              # entries a folder listed (None for cameras and videos)
    items: int = 0                          # frames inspected (scored or errors)
    anomalous: int = 0
    errors: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    dropped: int = 0                        # live: frames replaced by a newer one before they were taken
    frames_lost: int = 0                    # video: frames that could not be read
    status: str = RUNNING
    ok_seen: int = 0                        # OK verdicts so far (which of them a sampled record keeps)

    @property
    def scored(self) -> int:
        return self.items - self.errors

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")

    def to_dict(self) -> dict[str, Any]:
        return {"entries": self.entries, "scored": self.scored, "errors": self.errors, "skipped": self.skipped,
                "anomalous": self.anomalous, "dropped": self.dropped, "frames_lost": self.frames_lost,
                "seconds": round(self.seconds, 3)}

    def accounting(self) -> str:
        """One line: what happened to every entry (for folders: the sum is the entries listed)."""
        skipped = sum(self.skipped.values())
        reasons = "".join(f" skipped_{re.sub(r'[^a-z]+', '_', why.split(' (')[0].lower()).strip('_')}={n}"
                          for why, n in sorted(self.skipped.items()))
        listed = f"entries={self.entries} " if self.entries is not None else ""
        lost = f" frames_lost={self.frames_lost}" if self.frames_lost else ""
        return f"{listed}scored={self.scored} errors={self.errors} skipped={skipped}{reasons}{lost}"


def overlay_name(frame_index: int, item: str) -> str:
    """A file name for an item's overlay image: its index and its file stem, safe on any system."""
    stem = "frame" if "#" in item else Path(display_name(item)).stem
    return f"{frame_index:06d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)[:80]}.jpg"


def _save_overlay(result: FrameResult, out_dir: Path) -> str | None:
    path = out_dir / overlay_name(result.index, result.item)
    try:
        write_image(path, render(result))
    except (OSError, cv2.error, MemoryError) as exc:
        log.warning("overlay of %s not saved: %s", display_name(result.item), exc)
        return None
    return str(path)


def prepare_ahead(inspector: Inspector) -> Callable[[Frame], None]:
    """The work a folder's decoding threads do besides decoding: cut the tiles, make the thumbnail.

    It runs in parallel there instead of one image at a time on the inspecting thread.
    """
    def prepare(frame: Frame) -> None:
        inspector.prepare(frame)
        frame.prepared["thumbnail"] = image_thumbnail(frame.image)

    return prepare


def _tile_count(inspector: Inspector, frame: Frame) -> int:
    if frame.image is None:
        return 0
    try:
        return len(inspector.grid(frame.image.shape))
    except TilingError:      # inspect_batch records it as the frame's error
        return 0


def make_output_folder(path: Path) -> None:
    """The folder for a run's overlays, made now; an ``OutputError`` when it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot write overlays to {path}: a file of that name is in the way") from None
    except OSError as exc:
        raise OutputError(f"cannot write overlays to {path}: {exc.strerror or exc}") from exc


def _frames(source: Source, should_stop: Callable[[], bool]) -> Iterator[Frame]:
    """The source's frames; a camera is polled, so that a stop is seen while no frame comes."""
    if isinstance(source, FolderSource):
        yield from source
        return
    while not should_stop():
        frame = source.next_frame(timeout=POLL_S)
        if frame is not None:
            yield frame
        elif source.ended:
            return


def run_inspection(inspector: Inspector, source: Source, store: ResultStore, run_id: int, *,
                   out_dir: Path | None = None, max_frames: int | None = None, record: Record = Record.ALL,
                   progress: ProgressCallback | None = None, should_cancel: Callable[[], bool] | None = None,
                   is_paused: Callable[[], bool] | None = None,
                   on_result: Callable[[FrameResult], None] | None = None) -> RunSummary:
    """Inspect ``source`` until it ends, ``max_frames`` are done, or the caller cancels.

    The run's row in ``store`` is finished with its status and summary; see the module docstring.
    """
    folder = isinstance(source, FolderSource)
    if folder and source.prepare is None:
        source.prepare = prepare_ahead(inspector)
    live = isinstance(source, CameraSource) and source.keep_latest
    already_done = source.skipped.get(ALREADY_RECORDED, 0) if folder else 0
    total = max_frames if max_frames is not None else source.total
    summary = RunSummary(run_id, entries=source.entries_listed if folder else None,
                         skipped=dict(source.skipped) if folder else {})
    cancelled = should_cancel or (lambda: False)
    t0 = time.perf_counter()

    def handle(batch: list[Frame]) -> None:
        results = inspector.inspect_batch(batch)
        batch.clear()                         # the frames live on in the results only
        for result in results:
            overlay = None
            verdict = result.verdict
            if verdict == NG:
                summary.anomalous += 1
                if out_dir is not None:
                    overlay = _save_overlay(result, out_dir)
            elif verdict == ERROR:
                summary.errors += 1
                log.warning("%s: %s", display_name(result.item), result.error)
            if verdict == OK:
                summary.ok_seen += 1
            if (record is Record.ALL or verdict != OK
                    or (record is Record.SAMPLED and summary.ok_seen % OK_SAMPLE_EVERY == 1)):
                store.add(run_id, result, overlay=overlay)
            summary.items += 1
            if on_result is not None:
                on_result(result)
        results.clear()
        store.flush()
        summary.seconds = time.perf_counter() - t0
        if progress is not None:
            done = summary.items
            eta = (summary.seconds / done * (total - done)) if total and done else None
            progress(Progress("inspect", already_done + done, already_done + total if total else 0, eta_s=eta,
                              info={"NG": summary.anomalous, "errors": summary.errors}))

    status, error = COMPLETED, None
    batch: list[Frame] = []
    tiles = nbytes = 0
    frames = _frames(source, cancelled)
    try:
        if out_dir is not None:
            make_output_folder(out_dir)
        while True:
            if cancelled():
                status = CANCELLED
                break
            if is_paused is not None and is_paused():
                time.sleep(0.05)
                continue
            frame = next(frames, None)
            if frame is None:
                if cancelled():
                    status = CANCELLED
                break
            batch.append(frame)
            tiles += _tile_count(inspector, frame)
            nbytes += 0 if frame.image is None else frame.image.nbytes
            del frame                         # no reference of ours while the next one is decoded
            if live or tiles >= BATCH_TILES or len(batch) >= BATCH_FRAMES or nbytes >= BATCH_BYTES or (
                    max_frames is not None and summary.items + len(batch) >= max_frames):
                handle(batch)
                tiles = nbytes = 0
            if max_frames is not None and summary.items >= max_frames:
                status = f"stopped after {max_frames} items (--max-frames)"
                break
        if batch:
            handle(batch)
        if status == COMPLETED and source.status.failed:
            status = f"failed: {source.status.detail}"
    except KeyboardInterrupt:
        status = INTERRUPTED
    except Exception as exc:   # recorded as the run's end, then raised for the caller to report
        log.exception("inspection run %d failed", run_id)
        status, error = f"failed: {type(exc).__name__}: {exc}", exc
    finally:
        frames.close()
        source.close()
        summary.seconds = time.perf_counter() - t0
        summary.dropped = source.dropped
        summary.frames_lost = source.frames_lost
        summary.status = status
        try:
            store.finish_run(run_id, status, summary.to_dict())
        except Exception:
            if error is None and status != INTERRUPTED:
                raise
            log.exception("the end of run %d could not be recorded", run_id)   # the cause below matters more
    if error is not None:
        raise error
    return summary
