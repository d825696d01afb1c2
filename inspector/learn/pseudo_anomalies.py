"""Synthetic pseudo-anomalies painted onto good tiles.

They give the methods that learn from anomalies (EIDN; AGAD later) negatives when no labelled
defect exists yet — a new line, an operator with only good parts — and widen the few labelled
ones when some do.  Four kinds, the common surface defects: thin dark cracks (a jagged random
walk), scratches (a thin bright or dark arc), spots (a soft-edged blob) and cut-and-paste patches
(a piece of another good tile, flipped and re-lit, pasted elsewhere: CutPaste, Li et al. 2021).

All functions take and return uint8 tiles (S, S, C) and draw their randomness from the given
``numpy.random.Generator``, so a seeded run paints the same defects.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np


def _blend(tile: np.ndarray, mask: np.ndarray, target: np.ndarray | float) -> np.ndarray:
    """tile*(1-mask) + target*mask, with mask (S, S) in [0, 1]."""
    m = mask[:, :, None]
    out = tile.astype(np.float32) * (1.0 - m) + np.asarray(target, np.float32) * m
    return np.clip(out, 0, 255).astype(np.uint8)


def crack(tile: np.ndarray, rng: np.random.Generator, _others: np.ndarray | None = None) -> np.ndarray:
    """A thin dark jagged line: a random walk whose heading drifts, sometimes with a branch."""
    s = tile.shape[0]
    mask = np.zeros(tile.shape[:2], np.float32)
    for _ in range(1 + int(rng.random() < 0.3)):
        p = rng.uniform(0.1 * s, 0.9 * s, 2)
        heading = rng.uniform(0, 2 * np.pi)
        pts = [p.copy()]
        for _ in range(int(rng.integers(4, 12))):
            heading += rng.normal(0, 0.5)
            p = p + rng.uniform(s / 16, s / 6) * np.array([np.cos(heading), np.sin(heading)])
            pts.append(p.copy())
        thickness = int(rng.integers(1, max(2, s // 32) + 1))
        cv2.polylines(mask, [np.round(np.array(pts)).astype(np.int32)], False, 1.0, thickness, cv2.LINE_AA)
    darkness = rng.uniform(0.4, 0.85)
    return _blend(tile, mask * darkness, 0.0)


def scratch(tile: np.ndarray, rng: np.random.Generator, _others: np.ndarray | None = None) -> np.ndarray:
    """A thin smooth arc (quadratic Bezier), brighter or darker than the surface."""
    s = tile.shape[0]
    a, b, c = (rng.uniform(0, s, 2) for _ in range(3))
    t = np.linspace(0, 1, 32)[:, None]
    pts = (1 - t) ** 2 * a + 2 * (1 - t) * t * c + t**2 * b
    mask = np.zeros(tile.shape[:2], np.float32)
    cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, 1.0, 1, cv2.LINE_AA)
    target = 255.0 if rng.random() < 0.5 else 0.0
    return _blend(tile, mask * rng.uniform(0.4, 0.9), target)


def spot(tile: np.ndarray, rng: np.random.Generator, _others: np.ndarray | None = None) -> np.ndarray:
    """A soft-edged elliptical blob (hole, stain, inclusion), darker or brighter."""
    s = tile.shape[0]
    mask = np.zeros(tile.shape[:2], np.float32)
    centre = tuple(int(v) for v in rng.uniform(0.1 * s, 0.9 * s, 2))
    axes = tuple(int(v) for v in rng.uniform(s / 40, s / 8, 2).clip(1))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.5, min(axes) / 3))
    mean = float(tile.mean())
    target = mean * rng.uniform(0.1, 0.5) if rng.random() < 0.65 else min(255.0, mean + rng.uniform(50, 120))
    return _blend(tile, mask * rng.uniform(0.6, 1.0), target)


def patch(tile: np.ndarray, rng: np.random.Generator, others: np.ndarray | None = None) -> np.ndarray:
    """Cut-and-paste: a rectangle of another good tile (or this one), flipped, rotated, re-lit."""
    s = tile.shape[0]
    source = others[rng.integers(len(others))] if others is not None and len(others) else tile
    h, w = (int(v) for v in rng.uniform(s / 10, s / 3, 2))
    y0, x0 = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
    piece = source[y0:y0 + h, x0:x0 + w].astype(np.float32)
    if rng.random() < 0.5:
        piece = piece[:, ::-1]
    piece = np.rot90(piece, int(rng.integers(0, 4)))
    piece = piece * rng.uniform(0.6, 1.4) + rng.uniform(-30, 30)
    ph, pw = piece.shape[:2]
    y1, x1 = int(rng.integers(0, s - ph + 1)), int(rng.integers(0, s - pw + 1))
    out = tile.copy()
    out[y1:y1 + ph, x1:x1 + pw] = np.clip(piece, 0, 255).astype(np.uint8).reshape(ph, pw, -1)
    return out


KINDS: dict[str, Callable[..., np.ndarray]] = {"crack": crack, "scratch": scratch, "spot": spot, "patch": patch}


def make_pseudo_anomalies(normals: np.ndarray, count: int, rng: np.random.Generator,
                          kinds: tuple[str, ...] = tuple(KINDS)) -> np.ndarray:
    """``count`` pseudo-anomalous tiles (count, S, S, C) painted on randomly chosen good tiles."""
    if len(normals) == 0:
        raise ValueError("pseudo-anomalies need good tiles to paint on")
    painters = [KINDS[k] for k in kinds]
    out = np.empty((count, *normals.shape[1:]), np.uint8)
    for i in range(count):
        tile = normals[rng.integers(len(normals))]
        for _ in range(1 + int(rng.random() < 0.25)):
            tile = painters[rng.integers(len(painters))](tile, rng, normals)
        out[i] = tile
    return out
