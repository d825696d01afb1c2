"""Cutting a frame into model-sized tiles and stitching tile results back into a heat map.

Large surfaces are inspected the "concrete crack" way: the frame (or its region of interest) is cut
into square tiles of ``tile`` frame pixels every ``stride`` pixels, each tile is scored, and the
tile results are stitched into one heat map at frame resolution.  Part-sized images are instead
inspected whole: one tile, the whole region resized to the model's input.

Resizing happens once per frame, not once per tile: the region is scaled so that a tile becomes
exactly the model's input size, and the tiles are gathered from it with one fancy-indexing step.
The last row and column of tiles are shifted to end at the region's edge, so every pixel is covered.

A fully convolutional model (on backbone features) is not tiled: the region, resized by the model's
scale, goes through whole (``plan_whole``) and its map has one cell per ``map_stride`` pixels.
Either way a grid knows how many frame pixels one cell of its heat map covers (``cell``), and
``resample`` brings a heat map to any resolution from that alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..base.errors import InspectorError
from .heatmap import SMOOTHING_SIGMA
from .tensors import at_scale, fit_tile

Roi = tuple[int, int, int, int]  # x, y, width, height in frame pixels


class TilingError(InspectorError):
    """Tiling settings that cannot work (non-positive sizes, a region outside the frame)."""


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one frame shape lie, in frame pixels and in the scaled region."""

    frame_shape: tuple[int, int]    # (H, W) of the frame
    roi: Roi                        # the inspected region, clipped to the frame
    size: int                       # the model's input size
    tile: int | None                # tile side in frame pixels; None: the whole region is one tile
    scaled_shape: tuple[int, int]   # (h, w) of the region resized so that a tile is ``size`` pixels
    offsets: np.ndarray             # (n, 2) int: (y, x) of each tile in the scaled region
    boxes: np.ndarray               # (n, 4) int: x0, y0, x1, y1 of each tile in the frame
    cell: tuple[float, float] = (1.0, 1.0)   # frame pixels (y, x) one cell of the heat map covers
    scale: float | None = None      # whole-region grids: the region is resized by this

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def whole(self) -> bool:
        """The region goes to a fully convolutional model whole, at ``scale``."""
        return self.scale is not None


def _clip_roi(frame_shape: tuple[int, int], roi: Roi | None) -> Roi:
    h, w = frame_shape
    if roi is None:
        return 0, 0, w, h
    x, y, rw, rh = (int(v) for v in roi)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(w, x + rw), min(h, y + rh)
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise TilingError(f"region of interest {roi} lies outside the {w}x{h} frame")
    return x0, y0, x1 - x0, y1 - y0


def _starts(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def plan_grid(frame_shape: tuple[int, int], size: int, *, tile: int | None = None, stride: int | None = None,
              roi: Roi | None = None) -> TileGrid:
    """The tile grid for frames of ``frame_shape`` (H, W).

    ``tile`` None inspects the whole region as one tile.  A tile larger than the region shrinks to
    the region's shorter side.  ``stride`` defaults to ``tile`` (no overlap).
    """
    if (tile is not None and tile < 1) or (stride is not None and stride < 1):
        raise TilingError("tile size and stride must be positive")
    x, y, w, h = _clip_roi(frame_shape, roi)
    if tile is None:
        return TileGrid(tuple(frame_shape), (x, y, w, h), size, None, (size, size),
                        np.zeros((1, 2), np.int64), np.array([[x, y, x + w, y + h]], np.int64),
                        cell=(h / size, w / size))
    t = min(tile, w, h)
    s = stride or t
    ys, xs = _starts(h, t, s), _starts(w, t, s)
    scale = size / t
    hs, ws = max(size, round(h * scale)), max(size, round(w * scale))
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    gy, gx = gy.ravel(), gx.ravel()
    offsets = np.stack([np.minimum(np.round(gy * scale).astype(np.int64), hs - size),
                        np.minimum(np.round(gx * scale).astype(np.int64), ws - size)], axis=1)
    boxes = np.stack([x + gx, y + gy, x + gx + t, y + gy + t], axis=1).astype(np.int64)
    return TileGrid(tuple(frame_shape), (x, y, w, h), size, t, (hs, ws), offsets, boxes, cell=(h / hs, w / ws))


def plan_whole(frame_shape: tuple[int, int], *, scale: float, map_stride: int, roi: Roi | None = None) -> TileGrid:
    """The grid of a fully convolutional model: the region resized by ``scale``, in one piece."""
    if not scale > 0:
        raise TilingError(f"the model's scale must be positive, got {scale}")
    x, y, w, h = _clip_roi(frame_shape, roi)
    hs, ws = max(1, round(h * scale)), max(1, round(w * scale))
    cell = (map_stride * h / hs, map_stride * w / ws)
    return TileGrid(tuple(frame_shape), (x, y, w, h), map_stride, None, (hs, ws), np.zeros((1, 2), np.int64),
                    np.array([[x, y, x + w, y + h]], np.int64), cell=cell, scale=scale)


def _pixel_index(grid: TileGrid) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (n, S, 1) and (n, 1, S) that gather every tile from the scaled region at once."""
    r = np.arange(grid.size)
    return (grid.offsets[:, 0, None] + r)[:, :, None], (grid.offsets[:, 1, None] + r)[:, None, :]


def cut_tiles(image: np.ndarray, grid: TileGrid, channels: int) -> np.ndarray:
    """The tiles of a uint8 BGR frame as model input: (n, S, S, channels) uint8; for a whole-region
    grid, the region at the model's scale: (1, hs, ws, channels)."""
    if image.shape[:2] != grid.frame_shape:
        raise TilingError(f"frame is {image.shape[1]}x{image.shape[0]}, the grid was planned for "
                         f"{grid.frame_shape[1]}x{grid.frame_shape[0]}")
    x, y, w, h = grid.roi
    region = image[y:y + h, x:x + w]
    if grid.whole:
        return at_scale(region, grid.scale, channels)[None]
    if grid.tile is None:
        return fit_tile(region, grid.size, channels)[None]
    hs, ws = grid.scaled_shape
    interp = cv2.INTER_AREA if hs <= h else cv2.INTER_LINEAR
    scaled = cv2.resize(region, (ws, hs), interpolation=interp)
    if channels == 1:
        scaled = cv2.cvtColor(scaled, cv2.COLOR_BGR2GRAY)[:, :, None]
    iy, ix = _pixel_index(grid)
    return scaled[iy, ix]


def stitch(grid: TileGrid, tile_values: np.ndarray, tile_maps: np.ndarray | None = None) -> np.ndarray:
    """A heat map of the scaled region (``grid.scaled_shape``) from per-tile values (n,), e.g. normalised scores.

    Without difference maps each tile's pixels take the tile's value; with maps (n, S, S) the
    value is spread by each tile's map relative to its own maximum, so the defect is located
    inside the tile while the tile's level is kept.  Where tiles overlap the larger value wins.
    ``heat_image`` brings the result to frame (or any other) resolution.
    """
    values = np.asarray(tile_values, np.float32)
    n, size = len(grid), grid.size
    if values.shape != (n,):
        raise TilingError(f"expected {n} tile values, got {values.shape}")
    if tile_maps is None:
        if n == 1:
            return np.full(grid.scaled_shape, values[0], np.float32)
        pixels = np.broadcast_to(values[:, None, None], (n, size, size))
    else:
        maps = smooth_maps(np.asarray(tile_maps, np.float32))
        peak = maps.reshape(n, -1).max(axis=1)
        pixels = values[:, None, None] * maps / np.maximum(peak, 1e-12)[:, None, None]
    scaled = np.zeros(grid.scaled_shape, np.float32)
    np.maximum.at(scaled, _pixel_index(grid), pixels)
    return scaled


def smooth_maps(maps: np.ndarray) -> np.ndarray:
    """Gaussian smoothing of each (S, S) map of (n, S, S) by itself, with no bleeding between tiles.

    The tiles go through OpenCV as the channels of one image (at most 512 at a time).
    """
    out = np.empty_like(maps)
    for start in range(0, len(maps), 512):
        chunk = np.ascontiguousarray(maps[start:start + 512].transpose(1, 2, 0))
        blurred = cv2.GaussianBlur(chunk, (0, 0), SMOOTHING_SIGMA, borderType=cv2.BORDER_REFLECT)
        out[start:start + 512] = blurred.reshape(chunk.shape).transpose(2, 0, 1)
    return out


def resample(heat: np.ndarray, cells_per_pixel: tuple[float, float], size: tuple[int, int],
             first_row: int = 0) -> np.ndarray:
    """``heat`` (one value a cell) at ``size`` (w, h) output pixels, ``cells_per_pixel`` (y, x) cells for
    each output pixel, bilinear, starting at output row ``first_row`` (for drawing in bands).

    What ``cv2.resize`` does when the map spans the output exactly, and right also where it does not
    (a padded image's map reaches past the region by part of a cell).
    """
    sy, sx = cells_per_pixel
    to_source = np.float32([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, (first_row + 0.5) * sy - 0.5]])
    return cv2.warpAffine(np.ascontiguousarray(heat, np.float32), to_source, size,
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def region_placement(grid: TileGrid, shape: tuple[int, int] | None = None
                     ) -> tuple[tuple[int, int, int, int], tuple[float, float]]:
    """Where the region lies in an output of ``shape`` (H, W; default the frame's) — (x0, y0, x1, y1) —
    and how many heat cells (y, x) each output pixel spans there."""
    fh, fw = grid.frame_shape
    h, w = shape or (fh, fw)
    x, y, rw, rh = grid.roi
    x0, y0 = round(x * w / fw), round(y * h / fh)
    x1, y1 = max(x0 + 1, round((x + rw) * w / fw)), max(y0 + 1, round((y + rh) * h / fh))
    return (x0, y0, x1, y1), ((rh / (y1 - y0)) / grid.cell[0], (rw / (x1 - x0)) / grid.cell[1])


def heat_image(grid: TileGrid, scaled: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The heat map at frame resolution, or at ``shape`` (H, W) for a thumbnail: float32.

    Pixels outside the region of interest are 0.
    """
    h, w = shape or grid.frame_shape
    (x0, y0, x1, y1), cells = region_placement(grid, (h, w))
    region = resample(scaled, cells, (x1 - x0, y1 - y0))
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return region
    heat = np.zeros((h, w), np.float32)
    heat[y0:y1, x0:x1] = region
    return heat
