"""The one place where images become model tensors.

Images in the core are uint8 BGR; a model sees float tiles ``(N, C, S, S)`` in [-1, 1], with
C = 1 (grey) or 3 (BGR order kept: the model is trained and used on the same order).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

#: Pixel scaling every detector is trained with; stored in each model file.
VALUE_RANGE = (-1.0, 1.0)


def fit_tile(img: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resize a BGR image (or a tile cut from one) to the model input: (size, size, channels) uint8."""
    interp = cv2.INTER_AREA if min(img.shape[:2]) >= size else cv2.INTER_LINEAR
    tile = cv2.resize(img, (size, size), interpolation=interp)
    if channels == 1:
        return cv2.cvtColor(tile, cv2.COLOR_BGR2GRAY)[:, :, None]
    return tile


def at_scale(img: np.ndarray, scale: float, channels: int) -> np.ndarray:
    """A BGR image (or region) resized by ``scale``, aspect ratio kept, as (H, W, channels) uint8.

    The one resampling of whole images: training, calibration and inspection all see a part at the
    same scale (area averaging to shrink, bilinear to enlarge).
    """
    if scale != 1.0:
        h, w = img.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR)
    if channels == 1:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None] if img.ndim == 3 and img.shape[2] == 3 else img
    return img


def pad_to_multiple(img: np.ndarray, multiple: int) -> np.ndarray:
    """Pad an image's bottom and right edges (mirrored) to sides that are multiples of ``multiple``.

    A fully convolutional detector takes any size this way: the image is never squashed, and the
    padding's part of the map is cut off again (``scoring.whole_images``).
    """
    h, w = img.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return img
    border = cv2.BORDER_REFLECT_101 if min(h, w) > 1 else cv2.BORDER_REPLICATE
    padded = cv2.copyMakeBorder(img, 0, ph, 0, pw, border)
    return padded[:, :, None] if padded.ndim == 2 else padded


def to_tensor(tiles: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 tiles (N, S, S, C) -> float (N, C, S, S) in [-1, 1] on ``device``.

    The uint8 data cross to the device before the float conversion: a quarter of the bytes.
    """
    t = torch.from_numpy(np.ascontiguousarray(tiles)) if isinstance(tiles, np.ndarray) else tiles
    t = t.to(device, non_blocking=True).permute(0, 3, 1, 2)
    return t.float().mul_(2.0 / 255.0).sub_(1.0)
