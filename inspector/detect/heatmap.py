"""Turning a tile's difference map into a heat map at image resolution."""

from __future__ import annotations

import cv2
import numpy as np

#: Gaussian smoothing of a raw difference map, in tile pixels: single-pixel reconstruction noise
#: is not a defect (anomalib smooths its maps the same way).
SMOOTHING_SIGMA = 1.0


def map_to_image(tile_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A (S, S) difference map, smoothed and resized to an image of ``shape`` (H, W): float32."""
    smoothed = cv2.GaussianBlur(tile_map.astype(np.float32), (0, 0), SMOOTHING_SIGMA)
    return cv2.resize(smoothed, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
