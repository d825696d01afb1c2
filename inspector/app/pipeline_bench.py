"""The pipeline benchmark: folder review against a decode-only pass, and live tiled 1280x720 frames.

Both parts run in one process on the same machine, through the same code as ``inspect``:

- folder: every image of the folder inspected whole and recorded in a (temporary) results
  database, against a pass that only decodes the same files with the same thread pool.  One
  untimed decode pass first, so both timed passes read from the page cache alike.
- live: a simulated camera offers 1280x720 frames at ``camera_fps`` to a live ``CameraSource``
  (newest frame only, drops counted); each frame is tiled, scored, stitched and recorded.
  Latency is from the moment the frame was captured to the moment its result was ready.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..base.progress import ProgressCallback
from ..detect.device import device_name, device_tag
from ..detect.pipeline import FrameResult, Inspector
from ..frames.images import ImageReadError, read_image
from ..frames.sources import CameraSource, FolderSource, FrameClock, SourceError
from ..learn.datasets import list_images
from ..results.overlay import render
from ..results.store import ResultStore
from .inspection import InspectorSettings, load_inspector, run_inspection, run_settings

LIVE_SHAPE = (720, 1280)
#: Results at the start of the live run left out of the latency figures (first calls warm up).
LIVE_WARMUP_FRAMES = 5


@dataclass
class LiveSettings:
    tile: int = 160
    stride: int | None = None
    seconds: float = 10.0
    camera_fps: float = 60.0


class ReplayCapture:
    """A stand-in for a live camera's VideoCapture: pre-made frames offered at a fixed rate."""

    def __init__(self, frames: list[np.ndarray], fps: float) -> None:
        self.frames, self.clock = frames, FrameClock(fps)
        self.count = 0

    def isOpened(self) -> bool:  # noqa: N802  (OpenCV's name)
        return True

    def read(self) -> tuple[bool, np.ndarray]:
        self.clock.wait()
        frame = self.frames[self.count % len(self.frames)].copy()  # a camera hands over a new buffer
        self.count += 1
        return True, frame

    def get(self, prop: int) -> float:
        return self.clock.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        pass


def mosaic_frames(files: list[Path], cell: int, count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """1280x720 frames tiled with images of the folder, each shrunk or grown to ``cell`` pixels."""
    rng = np.random.default_rng(seed)
    h, w = LIVE_SHAPE
    rows, cols = -(-h // cell), -(-w // cell)
    images = []
    for path in rng.permutation(np.array(files, dtype=object))[: rows * cols * 2]:
        try:
            images.append(cv2.resize(read_image(path), (cell, cell), interpolation=cv2.INTER_AREA))
        except ImageReadError:
            continue
    if not images:
        raise SourceError("no readable image in the folder to build live frames from")
    frames = []
    for _ in range(count):
        picks = [images[i] for i in rng.integers(0, len(images), rows * cols)]
        grid = np.concatenate([np.concatenate(picks[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)
        frames.append(np.ascontiguousarray(grid[:h, :w]))
    return frames


def _decode_only(files: list[Path]) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = sum(1 for _ in FolderSource(files))
    return n, time.perf_counter() - t0


def bench_pipeline(model: str | Path, folder: str | Path, *, device: str = "auto", half: bool = False,
                   engine: str = "auto", live: LiveSettings | None = None,
                   progress: ProgressCallback | None = None) -> dict[str, Any]:
    live = live or LiveSettings()
    files = list_images(Path(folder))
    if not files:
        raise SourceError(f"{folder}: no image files")
    settings = InspectorSettings(device=device, half=half, engine=engine)
    inspector, meta = load_inspector(model, settings)
    _decode_only(files)  # untimed: fill the page cache
    n_decoded, decode_s = _decode_only(files)

    with tempfile.TemporaryDirectory(prefix="inspector-bench-") as tmp, \
            ResultStore(Path(tmp) / "bench.sqlite") as store:
        run = store.start_run(source=str(folder), kind="folder", model=str(model), method=meta["method"],
                              settings=run_settings(inspector, settings), threshold=inspector.threshold)
        folder_run = run_inspection(inspector, FolderSource(files), store, run, progress=progress)

        if inspector.detector.fully_convolutional:
            live_inspector = inspector.copy()       # each frame whole, at the model's own scale
        else:
            live_inspector = Inspector(inspector.detector, inspector.calibration, tile=live.tile,
                                       stride=live.stride, half=half)
        frames = mosaic_frames(files, live.tile)
        latencies: list[float] = []
        last: list[FrameResult] = []

        def on_result(result: FrameResult) -> None:
            latencies.append(result.latency_s)
            last[:] = [result]

        camera = CameraSource("simulated camera", keep_latest=True,
                              opener=lambda _spec: ReplayCapture(frames, live.camera_fps))
        run = store.start_run(source="simulated camera", kind="camera", model=str(model), method=meta["method"],
                              settings=run_settings(live_inspector, settings), threshold=inspector.threshold)
        t_end = time.perf_counter() + live.seconds
        live_run = run_inspection(live_inspector, camera, store, run, on_result=on_result,
                                  should_cancel=lambda: time.perf_counter() >= t_end)
    timed = np.array(latencies[LIVE_WARMUP_FRAMES:] or latencies) * 1000.0
    overlay_ms = []
    for _ in range(10):
        t0 = time.perf_counter()
        render(last[0])
        overlay_ms.append((time.perf_counter() - t0) * 1000.0)
    folder_ips = folder_run.items_per_second
    decode_ips = n_decoded / decode_s if decode_s > 0 else 0.0
    return {
        "model": str(model), "method": meta["method"], "input_size": inspector.detector.size,
        "folder": str(folder), "n_files": len(files), "folder_errors": folder_run.errors,
        "folder_items_per_s": folder_ips, "decode_only_items_per_s": decode_ips,
        "ratio": folder_ips / decode_ips if decode_ips else 0.0,
        "live_frame": f"{LIVE_SHAPE[1]}x{LIVE_SHAPE[0]}", "live_tile": live.tile,
        "live_stride": live.stride or live.tile,
        "live_tiles_per_frame": len(live_inspector.grid(LIVE_SHAPE)), "live_camera_fps": live.camera_fps,
        "live_scale": live_inspector.scale if inspector.detector.fully_convolutional else None,
        "live_frames": live_run.items, "live_dropped": live_run.dropped, "live_fps": live_run.items_per_second,
        "live_latency_p50_ms": float(np.percentile(timed, 50)), "live_latency_p95_ms": float(np.percentile(timed, 95)),
        "overlay_ms": round(float(np.median(overlay_ms)), 2), "device": device_name(inspector.detector.device),
        "device_tag": device_tag(inspector.detector.device),
        "engine": getattr(inspector.detector, "engine", "torch"), "half": half,
    }
