"""Reading images from disk into the core's one image type: numpy uint8 BGR, (H, W, 3).

Every reader of the program goes through ``read_image`` so that grey, 16-bit, alpha and odd files
are handled once, and a file that cannot be read raises ``ImageReadError`` with the reason.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


class ImageReadError(Exception):
    """A file that is not a readable image; the message says why and names the file."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def to_bgr8(img: np.ndarray) -> np.ndarray:
    """Any decoded image (grey, BGR, BGRA; 8 or 16 bit or float) as uint8 BGR."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img.astype(np.float32) * (255.0 if img.max() <= 1.0 else 1.0), 0, 255)
        img = img.astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file as uint8 BGR; raise ImageReadError (never return None)."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # unlike cv2.imread, works with any path text
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if data.size == 0:
        raise ImageReadError(f"{path}: empty file")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageReadError(f"{path}: not a decodable image")
    return to_bgr8(img)


def read_mask(path: str | Path) -> np.ndarray:
    """A ground-truth mask as bool (H, W): anti-aliased masks are binarised at > 127."""
    img = read_image(path)
    return img[:, :, 0] > 127


def is_grey(img: np.ndarray) -> bool:
    """True when all three channels of a BGR image are equal (a grey image stored as colour)."""
    return bool(np.array_equal(img[:, :, 0], img[:, :, 1]) and np.array_equal(img[:, :, 1], img[:, :, 2]))
