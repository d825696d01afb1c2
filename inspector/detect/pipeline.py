"""From frames to verdicts: tiles -> detector -> frame score, verdict, heat map.

``Inspector`` holds a loaded detector with its stored calibration and the tiling settings.  The
tiles of one frame, or of several frames in batch mode, go to the detector as one batch on its
device (CUDA when there is one); the results are split back per frame.  The frame's score is its
worst tile; its heat map is the tiles' normalised scores stitched at frame resolution (0.5 = the
calibrated threshold), shaped inside each tile by the difference map where the method has one.

The operator may move the threshold (the GUI's slider): verdicts and flagged tiles follow it at
once, while normalised scores and heat maps keep the calibrated scale, so that a score means the
same before and after the move.  Each worker owns its ``Inspector`` (``copy``): moving the live
view's threshold or region never changes a folder run in progress.

A score that is not a finite number (a damaged model, an overflow) is never read as OK: the frame
is an ERROR with the reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from models import Detector

from ..frames.frame import Frame
from .calibration import Calibration, calibrate
from .scoring import map_images, score_tiles
from .search import use_faiss
from .tiling import Roi, TileGrid, TilingError, cut_tiles, heat_image, plan_grid, plan_whole, stitch

OK, NG, ERROR = "OK", "NG", "ERROR"
NON_FINITE = ("the model gave a score that is not a number (NaN or infinity); the model file or the image "
              "may be damaged")


@dataclass
class FrameResult:
    """What inspecting one frame found.  Scores are raw (the method's units) unless named normalised."""

    item: str
    index: int
    timestamp: float                    # when the frame was captured or decoded (time.monotonic)
    done_at: float                      # when this result was ready (time.monotonic)
    image: np.ndarray | None            # the frame, uint8 BGR
    error: str | None = None            # why the frame could not be inspected
    score: float = float("nan")         # the worst tile's raw score
    normalised: float = float("nan")    # in (0, 1) on the calibrated scale; 0.5 at the calibrated threshold
    threshold: float = float("nan")     # the raw threshold the verdict was taken against
    tile_scores: np.ndarray | None = None   # (n,) raw: per tile, or per map cell for a whole-region model
    grid: TileGrid | None = None            # where the tiles lie (``grid.boxes``: x0, y0, x1, y1 in the frame)
    heat_scaled: np.ndarray | None = None   # the heat map, one value a cell (``grid.cell``), normalised units
    heat_threshold: float = 0.5             # ``threshold`` in the heat map's (normalised) units
    embeddings: np.ndarray | None = None    # (n, l) for an embedding method (EIDN), one row per tile or cell
    thumbnail: bytes | None = None          # the image's thumbnail as JPEG, when made ahead
    _heat: np.ndarray | None = field(default=None, repr=False)

    @property
    def heat(self) -> np.ndarray | None:
        """The heat map at frame resolution, (H, W) float32 in normalised units (0.5 = calibrated threshold).

        Made on first use: a folder run that only records thumbnails never needs it.
        """
        if self._heat is None and self.heat_scaled is not None:
            self._heat = heat_image(self.grid, self.heat_scaled)
        return self._heat

    def heat_at(self, shape: tuple[int, int]) -> np.ndarray | None:
        """The heat map at another resolution (H, W), e.g. a thumbnail's."""
        return None if self.heat_scaled is None else heat_image(self.grid, self.heat_scaled, shape)

    @property
    def verdict(self) -> str:
        """OK or NG against ``threshold``; ERROR when there is no score to judge (never OK by default)."""
        if self.error is not None or not (math.isfinite(self.score) and math.isfinite(self.threshold)):
            return ERROR
        return NG if self.score > self.threshold else OK

    @property
    def latency_s(self) -> float:
        return self.done_at - self.timestamp

    def flagged_boxes(self) -> np.ndarray:
        """Boxes (x0, y0, x1, y1 in frame pixels) around the connected regions of the heat map over the
        threshold: around each defect, not around tiles."""
        if self.grid is None or self.heat_scaled is None or self.verdict != NG:
            return np.zeros((0, 4), np.int64)
        return flagged_regions(self.grid, self.heat_scaled, self.heat_threshold)


def flagged_regions(grid: TileGrid, heat: np.ndarray, level: float) -> np.ndarray:
    """Bounding boxes, in frame pixels, of the 8-connected regions of ``heat`` above ``level``."""
    mask = (heat > level).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return np.zeros((0, 4), np.int64)
    x, y, w, h = grid.roi
    cy, cx = grid.cell
    left, top, width, height = (stats[1:, i].astype(np.float64) for i in range(4))
    boxes = np.stack([x + left * cx, y + top * cy, x + (left + width) * cx, y + (top + height) * cy], axis=1)
    limits = np.array([x, y, x + w, y + h], np.float64)
    boxes = np.clip(np.round(boxes), limits[[0, 1, 0, 1]], limits[[2, 3, 2, 3]])
    return boxes.astype(np.int64)


def smooth_map(heat: np.ndarray, sigma: float) -> np.ndarray:
    """A map smoothed by a Gaussian of ``sigma`` cells (0: as it is): one stray cell is not a defect."""
    if sigma <= 0:
        return heat
    return cv2.GaussianBlur(heat, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


#: A whole-region model's heat map is smoothed by at most this many cells for showing: the frame's
#: score may take a wider smoothing (a steadier maximum), but a map that wide no longer outlines a crack.
HEAT_SMOOTHING = 1.0


class Inspector:
    """A detector ready to inspect frames: calibration, tiling or scale, region of interest, precision.

    Tile models (``detector.size``) are tiled by ``tile`` / ``stride`` frame pixels; a fully
    convolutional model sees the whole region resized by ``scale`` and its map is smoothed by
    ``smoothing`` cells before the frame's score (the map's maximum) is taken; the heat map shown
    is smoothed by at most ``HEAT_SMOOTHING`` cells.
    """

    def __init__(self, detector: Detector, calibration: Calibration, *, tile: int | None = None,
                 stride: int | None = None, roi: Roi | None = None, half: bool = False,
                 max_batch_tiles: int = 256, scale: float = 1.0, smoothing: float = 0.0) -> None:
        self.detector = detector
        self.calibration = calibration
        self._threshold = calibration.threshold
        self.half = half
        self.max_batch_tiles = max_batch_tiles
        self._tile, self._stride, self._roi = tile, stride, roi
        self.scale, self.smoothing = scale, smoothing
        self._grids: dict[tuple[tuple[int, int], Roi | None], TileGrid] = {}
        if detector.fully_convolutional:
            if tile is not None or stride is not None:
                raise TilingError("this model inspects each frame whole, at its own scale: tile size and stride "
                                  "apply to tile models only")
            plan_whole((64, 64), scale=scale, map_stride=detector.map_stride)     # reject a bad scale now
            if getattr(detector, "cpu_search", False) is None:      # a memory bank not yet given faiss's search
                use_faiss(detector)
        else:
            plan_grid((64, 64), detector.size, tile=tile, stride=stride)  # reject bad settings now

    # -- settings that may change while running (the GUI's threshold slider and ROI tool) ------
    @property
    def threshold(self) -> float:
        """The raw score above which a frame (or tile) is anomalous."""
        return self._threshold

    def set_threshold(self, raw: float) -> None:
        if not math.isfinite(raw):
            raise ValueError(f"the threshold must be a finite number, got {raw}")
        self._threshold = float(raw)

    def set_normalised_threshold(self, p: float) -> None:
        """Move the threshold to the raw score whose normalised score is ``p`` (0.5 = calibrated)."""
        self.set_threshold(self.calibration.denormalise(p))

    def copy(self) -> Inspector:
        """An Inspector of its own (threshold, region, tiling) sharing this one's loaded detector."""
        twin = Inspector(self.detector, self.calibration, tile=self._tile, stride=self._stride, roi=self._roi,
                         half=self.half, max_batch_tiles=self.max_batch_tiles, scale=self.scale,
                         smoothing=self.smoothing)
        twin._threshold = self._threshold
        return twin

    @property
    def normalised_threshold(self) -> float:
        return float(self.calibration.normalise(self._threshold))

    @property
    def tile(self) -> int | None:
        return self._tile

    @property
    def stride(self) -> int | None:
        return self._stride

    @property
    def roi(self) -> Roi | None:
        return self._roi

    def set_roi(self, roi: Roi | None) -> None:
        self._roi = None if roi is None else tuple(int(v) for v in roi)

    def grid(self, frame_shape: tuple[int, int]) -> TileGrid:
        """The tile grid for frames of this shape and the current region (planned once, then cached).

        Keyed by the region too: the UI thread may move the region while a worker plans a grid, and a
        grid planned for the old region must never be taken for the new one.
        """
        roi = self._roi                  # read once: the UI thread may change it meanwhile
        key = (tuple(frame_shape[:2]), roi)
        grid = self._grids.get(key)
        if grid is None:
            if len(self._grids) > 64:    # regions drawn one after another: keep the cache small
                self._grids = {}
            if self.detector.fully_convolutional:
                grid = plan_whole(key[0], scale=self.scale, map_stride=self.detector.map_stride, roi=roi)
            else:
                grid = plan_grid(key[0], self.detector.size, tile=self._tile, stride=self._stride, roi=roi)
            self._grids[key] = grid
        return grid

    # -- inspection -------------------------------------------------------------------------------
    def prepare(self, frame: Frame) -> None:
        """Cut the frame's tiles ahead (on a decoding thread); ``inspect_batch`` uses them if still valid."""
        if frame.image is None:
            return
        try:
            grid = self.grid(frame.image.shape)
            frame.prepared["tiles"] = (grid, cut_tiles(frame.image, grid, self.detector.channels))
        except TilingError:
            pass   # inspect_batch reports it

    def _tiles(self, frame: Frame) -> tuple[TileGrid, np.ndarray]:
        grid = self.grid(frame.image.shape)
        ready = frame.prepared.get("tiles")
        if ready is not None and ready[0] is grid:      # not if the ROI changed since
            return ready
        return grid, cut_tiles(frame.image, grid, self.detector.channels)

    def inspect(self, frame: Frame) -> FrameResult:
        return self.inspect_batch([frame])[0]

    def inspect_batch(self, frames: list[Frame]) -> list[FrameResult]:
        """Inspect frames together: all their tiles form one batch (chunked at ``max_batch_tiles``).

        Whatever goes wrong with one frame — a region outside it, memory, a decoder's or the model's
        exception — is that frame's ERROR result; the others are inspected.  When scoring the whole
        batch fails, its frames are scored one at a time, so that only the culprit is an error.
        """
        threshold = self._threshold
        results: list[FrameResult | None] = [None] * len(frames)
        cut: list[tuple[int, TileGrid, np.ndarray]] = []
        for i, frame in enumerate(frames):
            if frame.image is None:
                results[i] = self._error(frame, frame.error or "no image", threshold)
                continue
            try:
                grid, frame_tiles = self._tiles(frame)
            except Exception as exc:   # a region of interest outside this frame, memory, OpenCV
                results[i] = self._error(frame, _reason(exc), threshold)
                continue
            cut.append((i, grid, frame_tiles))
        score = self._score_whole if self.detector.fully_convolutional else self._score
        try:
            score(frames, cut, results, threshold)
        except Exception as exc:
            if len(cut) == 1:
                results[cut[0][0]] = self._error(frames[cut[0][0]], _reason(exc), threshold)
                return results  # type: ignore[return-value]
            for one in cut:
                try:
                    score(frames, [one], results, threshold)
                except Exception as exc:
                    results[one[0]] = self._error(frames[one[0]], _reason(exc), threshold)
        return results  # type: ignore[return-value]

    @staticmethod
    def _error(frame: Frame, reason: str, threshold: float) -> FrameResult:
        return FrameResult(frame.item, frame.index, frame.timestamp, time.monotonic(), frame.image, error=reason,
                           threshold=threshold, thumbnail=frame.prepared.get("thumbnail"))

    def _score(self, frames: list[Frame], cut: list[tuple[int, TileGrid, np.ndarray]],
               results: list[FrameResult | None], threshold: float) -> None:
        """Score the cut frames' tiles as one batch and fill in their results."""
        if not cut:
            return
        calibration = self.calibration
        grids = [grid for _, grid, _ in cut]
        out = score_tiles(self.detector, np.concatenate([tiles for _, _, tiles in cut]),
                          batch_size=self.max_batch_tiles, with_maps=self.detector.has_difference_map,
                          half=self.half)
        bounds = np.cumsum([len(g) for g in grids])[:-1]
        maps = np.split(out.maps, bounds) if out.maps is not None else [None] * len(cut)
        embs = np.split(out.embeddings, bounds) if out.embeddings is not None else [None] * len(cut)
        for (i, grid, _), raw, tile_maps, emb in zip(cut, np.split(out.scores, bounds), maps, embs, strict=True):
            frame = frames[i]
            if not math.isfinite(float(raw.max())):
                results[i] = self._non_finite(frame, float(raw.max()), grid, threshold)
                continue
            try:
                heat = stitch(grid, calibration.normalise(raw), tile_maps)
            except Exception as exc:   # memory for a very large map
                results[i] = self._error(frame, _reason(exc), threshold)
                continue
            results[i] = self._scored(frame, grid, threshold, raw, heat, emb)

    def _score_whole(self, frames: list[Frame], cut: list[tuple[int, TileGrid, np.ndarray]],
                     results: list[FrameResult | None], threshold: float) -> None:
        """A fully convolutional model: each region (at the model's scale) in one pass, its map
        smoothed; the frame's score is the map's maximum."""
        if not cut:
            return
        calibration = self.calibration
        answers = map_images(self.detector, [region[0] for _, _, region in cut], half=self.half)
        for (i, grid, _), answer in zip(cut, answers, strict=True):
            frame = frames[i]
            raw = smooth_map(answer.map, self.smoothing)
            if not math.isfinite(float(raw.max())):
                results[i] = self._non_finite(frame, float(raw.max()), grid, threshold)
                continue
            shown = smooth_map(answer.map, min(self.smoothing, HEAT_SMOOTHING))
            emb = None if answer.embeddings is None else answer.embeddings.reshape(-1, answer.embeddings.shape[-1])
            results[i] = self._scored(frame, grid, threshold, raw.ravel(),
                                      calibration.normalise(shown).astype(np.float32), emb)

    @staticmethod
    def _non_finite(frame: Frame, worst: float, grid: TileGrid, threshold: float) -> FrameResult:
        return FrameResult(frame.item, frame.index, frame.timestamp, time.monotonic(), frame.image,
                           error=NON_FINITE, score=worst, threshold=threshold, grid=grid,
                           thumbnail=frame.prepared.get("thumbnail"))

    def _scored(self, frame: Frame, grid: TileGrid, threshold: float, raw: np.ndarray, heat: np.ndarray,
                emb: np.ndarray | None) -> FrameResult:
        """A frame's result from its raw scores (per tile or map cell; the frame's is their maximum)
        and its heat map in normalised units."""
        worst = float(raw.max())
        return FrameResult(frame.item, frame.index, frame.timestamp, time.monotonic(), frame.image,
                           score=worst, normalised=float(self.calibration.normalise(worst)),
                           threshold=threshold, tile_scores=raw, grid=grid, heat_scaled=heat,
                           heat_threshold=float(self.calibration.normalise(threshold)),
                           embeddings=emb, thumbnail=frame.prepared.get("thumbnail"))


def _reason(exc: Exception) -> str:
    """An exception as an error row's reason: its message, or its kind where it has none."""
    if isinstance(exc, MemoryError):
        return "not enough memory to inspect this image"
    return str(exc) or type(exc).__name__


def calibrate_frames(inspector: Inspector, good_frames: Iterable[np.ndarray], *,
                     false_alarm_rate: float = 0.01) -> Calibration:
    """A calibration for frames inspected as ``inspector`` tiles them, from good frames.

    A model calibrated on single tiles sets its threshold so that a fraction ``r`` of good tiles
    exceeds it; a frame of n tiles takes its worst tile, so about 1 - (1 - r)^n of good frames
    would be flagged (70 % for 120 tiles at r = 1 %).  Calibrating on whole good frames fixes the
    false-alarm rate where the operator sees it: per frame.
    """
    scores = [inspector.inspect(Frame(img, f"calibration#{i}", i, time.monotonic())).score
              for i, img in enumerate(good_frames)]
    return calibrate(np.array(scores), false_alarm_rate=false_alarm_rate)
