"""An inspection run: a source's frames through an Inspector into the results database.

Shared by the ``inspect`` command, the pipeline benchmark and the GUI's workers: frames are taken
from the source (in batches of tiles for folders and video files, one at a time for live cameras
so that latency stays low), inspected, recorded, and — for anomalous items when an output folder is given
— saved as overlay images.  Progress goes to a callback; ``should_cancel`` stops between batches;
Ctrl-C ends the run cleanly with everything done so far recorded.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from .modelfile import calibration_of, load_model
from .overlay import render
from .pipeline import ERROR, NG, FrameResult, Inspector
from .progress import Progress, ProgressCallback
from .sources import CameraSource, FolderSource, Frame
from .store import ResultStore, image_thumbnail
from .tiling import Roi, TilingError
from .training import device_name, resolve_device

log = logging.getLogger(__name__)

#: Folders and video files are inspected in batches of at least this many tiles (or BATCH_FRAMES
#: frames): a small batch costs the model nearly as much as a full one (measured on the CPU: 8 tiles
#: of 32 px took 11 ms, 64 tiles 13 ms).
BATCH_TILES = 64
BATCH_FRAMES = 64


@dataclass
class InspectorSettings:
    tile: int | None = None
    stride: int | None = None
    roi: Roi | None = None
    device: str = "auto"
    half: bool = False


def load_inspector(model: str | Path, settings: InspectorSettings) -> tuple[Inspector, dict[str, Any]]:
    """Load a model file onto the chosen device and wrap it with its stored calibration.

    Without a tile size in ``settings``, the tiling the model file recommends (a model trained on
    tiles of a larger surface, like the demo's) is used; without one, each frame is one tile.
    """
    device = resolve_device(settings.device)
    detector, meta = load_model(model, device=device)
    made_for = meta.get("inspection", {})
    tile = settings.tile if settings.tile is not None else made_for.get("tile")
    stride = settings.stride if settings.tile is not None else made_for.get("stride")
    inspector = Inspector(detector, calibration_of(meta), tile=tile, stride=stride, roi=settings.roi,
                          half=settings.half)
    return inspector, meta


def run_settings(inspector: Inspector, settings: InspectorSettings) -> dict[str, Any]:
    """What a run records about how it inspected (for the database and the report)."""
    return {"tile": inspector.tile, "stride": inspector.stride, "roi": inspector.roi, "half": settings.half,
            "normalised_threshold": inspector.normalised_threshold,
            "device": device_name(inspector.detector.device), "input_size": inspector.detector.size,
            "channels": inspector.detector.channels}


@dataclass
class RunSummary:
    run_id: int
    items: int = 0
    anomalous: int = 0
    errors: int = 0
    seconds: float = 0.0
    dropped: int = 0
    status: str = "running"

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


def overlay_name(frame_index: int, item: str) -> str:
    """A file name for an item's overlay image: its index and its file stem, safe on any system."""
    stem = "frame" if "#" in item else Path(item).stem
    return f"{frame_index:06d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)[:80]}.jpg"


def _save_overlay(result: FrameResult, out_dir: Path) -> str | None:
    path = out_dir / overlay_name(result.index, result.item)
    try:
        if not cv2.imwrite(str(path), render(result)):
            raise OSError("OpenCV could not write it")
    except (OSError, cv2.error) as exc:
        log.warning("overlay of %s not saved: %s", result.item, exc)
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


def run_inspection(inspector: Inspector, source: CameraSource | FolderSource, store: ResultStore, run_id: int, *,
                   out_dir: Path | None = None, max_frames: int | None = None, already_done: int = 0,
                   progress: ProgressCallback | None = None, should_cancel: Callable[[], bool] | None = None,
                   on_result: Callable[[FrameResult], None] | None = None) -> RunSummary:
    """Inspect ``source`` until it ends, ``max_frames`` are done, or the caller cancels.

    ``already_done`` counts items recorded by an earlier part of a resumed run (for the progress).
    The run's row in ``store`` is finished with its status: completed, cancelled, interrupted
    (Ctrl-C) or the camera's reason for stopping.
    """
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(source, FolderSource) and source.prepare is None:
        source.prepare = prepare_ahead(inspector)
    live = isinstance(source, CameraSource) and source.keep_latest
    total = max_frames if max_frames is not None else source.total
    summary = RunSummary(run_id)
    t0 = time.perf_counter()

    def handle(batch: list[Frame]) -> None:
        for result in inspector.inspect_batch(batch):
            overlay = None
            if result.verdict == NG:
                summary.anomalous += 1
                if out_dir is not None:
                    overlay = _save_overlay(result, out_dir)
            elif result.verdict == ERROR:
                summary.errors += 1
                log.warning("%s: %s", result.item, result.error)
            store.add(run_id, result, overlay=overlay)
            summary.items += 1
            if on_result is not None:
                on_result(result)
        summary.seconds = time.perf_counter() - t0
        if progress is not None:
            done = summary.items
            eta = (summary.seconds / done * (total - done)) if total and done else None
            progress(Progress("inspect", already_done + done, already_done + total if total else 0, eta_s=eta,
                              info={"NG": summary.anomalous, "errors": summary.errors}))

    status = "completed"
    batch: list[Frame] = []
    tiles = 0
    try:
        for frame in source:
            batch.append(frame)
            tiles += _tile_count(inspector, frame)
            if live or tiles >= BATCH_TILES or len(batch) >= BATCH_FRAMES or (
                    max_frames is not None and summary.items + len(batch) >= max_frames):
                handle(batch)
                batch, tiles = [], 0
            if max_frames is not None and summary.items >= max_frames:
                break
            if should_cancel is not None and should_cancel():
                status = "cancelled"
                break
        if batch:
            handle(batch)
        if isinstance(source, CameraSource) and source.status.startswith(("lost", "failed")):
            status = f"stopped: {source.status}"
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        source.close()
        summary.seconds = time.perf_counter() - t0
        summary.dropped = source.dropped
        summary.status = status
        store.finish_run(run_id, status)
    return summary
