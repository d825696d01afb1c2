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


def to_tensor(tiles: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 tiles (N, S, S, C) -> float (N, C, S, S) in [-1, 1] on ``device``.

    The uint8 data cross to the device before the float conversion: a quarter of the bytes.
    """
    t = torch.from_numpy(np.ascontiguousarray(tiles)) if isinstance(tiles, np.ndarray) else tiles
    t = t.to(device, non_blocking=True).permute(0, 3, 1, 2)
    return t.float().mul_(2.0 / 255.0).sub_(1.0)
