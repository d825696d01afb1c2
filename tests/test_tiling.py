"""Tiling and stitching: every pixel covered, tiles as the model sees them, heat where the values are."""

import cv2
import numpy as np
import pytest

from inspector.detect.tensors import fit_tile
from inspector.detect.tiling import TilingError, cut_tiles, heat_image, plan_grid, stitch


def coverage(grid) -> np.ndarray:
    seen = np.zeros(grid.frame_shape, int)
    for x0, y0, x1, y1 in grid.boxes:
        seen[y0:y1, x0:x1] += 1
    return seen


def test_grid_covers_every_pixel_and_the_last_tiles_end_at_the_edge():
    grid = plan_grid((640, 1280), 32, tile=160)
    assert len(grid) == 4 * 8
    assert (coverage(grid) == 1).all()           # multiples of 160: no overlap
    grid = plan_grid((720, 1280), 32, tile=160)
    assert len(grid) == 5 * 8                     # the fifth row ends at the bottom edge
    assert coverage(grid).min() == 1 and grid.boxes[:, 3].max() == 720
    grid = plan_grid((100, 250), 32, tile=64, stride=48)
    seen = coverage(grid)
    assert seen.min() >= 1
    assert grid.boxes[:, 2].max() == 250 and grid.boxes[:, 3].max() == 100
    assert ((grid.boxes[:, 2] - grid.boxes[:, 0]) == 64).all()


def test_region_of_interest_limits_the_tiles():
    grid = plan_grid((480, 640), 32, tile=100, roi=(200, 100, 300, 200))
    seen = coverage(grid)
    assert seen[100:300, 200:500].min() == 1
    assert seen.sum() == seen[100:300, 200:500].sum()  # nothing outside the region
    with pytest.raises(TilingError, match="outside"):
        plan_grid((480, 640), 32, tile=100, roi=(700, 0, 10, 10))


def test_a_tile_larger_than_the_frame_shrinks_to_it_and_whole_mode_is_one_tile():
    grid = plan_grid((103, 400), 32, tile=227)
    assert ((grid.boxes[:, 3] - grid.boxes[:, 1]) == 103).all()
    whole = plan_grid((103, 400), 32)
    assert len(whole) == 1 and whole.boxes.tolist() == [[0, 0, 400, 103]]
    with pytest.raises(TilingError):
        plan_grid((100, 100), 32, tile=0)


def test_cut_tiles_match_resizing_each_tile_by_itself():
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8), (640, 384), interpolation=cv2.INTER_CUBIC)
    grid = plan_grid(base.shape[:2], 32, tile=128, stride=64)
    tiles = cut_tiles(base, grid, 3)
    assert tiles.shape == (len(grid), 32, 32, 3) and tiles.dtype == np.uint8
    for tile, (x0, y0, x1, y1) in zip(tiles, grid.boxes, strict=True):
        alone = fit_tile(base[y0:y1, x0:x1], 32, 3)
        assert np.abs(tile.astype(int) - alone).mean() < 2.0
    grey = cut_tiles(base, grid, 1)
    assert grey.shape == (len(grid), 32, 32, 1)
    whole = cut_tiles(base, plan_grid(base.shape[:2], 32), 3)
    assert np.array_equal(whole[0], fit_tile(base, 32, 3))


def test_cut_tiles_refuses_a_frame_of_another_size():
    grid = plan_grid((100, 100), 32, tile=50)
    with pytest.raises(TilingError, match="planned for"):
        cut_tiles(np.zeros((120, 100, 3), np.uint8), grid, 3)


def test_a_value_in_one_tile_lights_that_tile_only():
    grid = plan_grid((300, 400), 16, tile=100)
    values = np.full(len(grid), 0.1, np.float32)
    hot = 5
    values[hot] = 0.9
    heat = heat_image(grid, stitch(grid, values))
    assert heat.shape == (300, 400)
    x0, y0, x1, y1 = grid.boxes[hot]
    inside = heat[y0 + 5:y1 - 5, x0 + 5:x1 - 5]
    assert inside.min() > 0.85
    outside = heat.copy()
    outside[max(0, y0 - 5):y1 + 5, max(0, x0 - 5):x1 + 5] = 0
    assert outside.max() <= 0.1 + 1e-6


def test_maps_place_the_defect_inside_its_tile_and_overlaps_keep_the_larger_value():
    grid = plan_grid((64, 128), 16, tile=64, stride=32)   # three overlapping tiles
    maps = np.full((3, 16, 16), 0.01, np.float32)
    maps[1, 2:4, 12:14] = 1.0                              # a spot in the middle tile's right part
    heat = heat_image(grid, stitch(grid, np.array([0.1, 0.8, 0.1]), maps))
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 32 + 40 <= x <= 32 + 64 and 4 <= y <= 20        # where the spot is, in frame pixels
    assert heat.max() > 0.5


def test_heat_outside_the_region_is_zero_and_thumbnails_keep_the_region_in_place():
    grid = plan_grid((200, 200), 16, tile=50, roi=(100, 0, 100, 200))
    scaled = stitch(grid, np.full(len(grid), 0.7))
    full = heat_image(grid, scaled)
    assert full[:, :100].max() == 0 and full[:, 100:].min() > 0.69
    thumb = heat_image(grid, scaled, (50, 50))
    assert thumb[:, :25].max() == 0 and thumb[:, 25:].min() > 0.69
