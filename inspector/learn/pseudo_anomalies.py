"""Synthetic pseudo-anomalies painted onto good images, each with its mask.

They give the methods that learn from anomalies (EIDN; AGAD on request) negatives when no labelled
defect exists yet — a new line, an operator with only good parts — and widen the few labelled
ones when some do.  Four kinds, the common surface defects: thin dark cracks (a jagged random
walk), scratches (a thin bright or dark arc), spots (a soft-edged blob) and cut-and-paste patches
(a piece of another good image, flipped and re-lit, pasted elsewhere: CutPaste, Li et al. 2021).

They are painted on the image as the model sees it (at the inspection scale, never on a shrunken
copy), sized in proportion to the image's shorter side, and with the surface's own texture kept:
a crack or spot darkens or lightens what is there by a random factor instead of painting a flat
colour, and a pasted patch is feathered at its edge.  Each painter also returns the mask of what it
changed (float32 in [0, 1]), so a method can learn which patches are anomalous.

All functions take uint8 images (H, W, C) and draw their randomness from the given
``numpy.random.Generator``, so a seeded run paints the same defects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

Painted = tuple[np.ndarray, np.ndarray]


def _shade(image: np.ndarray, mask: np.ndarray, gain: float) -> np.ndarray:
    """``image`` multiplied by ``1 + (gain - 1) * mask``: darker (gain < 1) or lighter, texture kept."""
    factor = 1.0 + (gain - 1.0) * mask[:, :, None]
    return np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def _lift(image: np.ndarray, mask: np.ndarray, offset: float) -> np.ndarray:
    """``image`` + ``offset * mask``: a brighter or darker mark with the texture under it kept."""
    return np.clip(image.astype(np.float32) + offset * mask[:, :, None], 0, 255).astype(np.uint8)


def crack(image: np.ndarray, rng: np.random.Generator, _others: Sequence[np.ndarray] | None = None) -> Painted:
    """A thin dark jagged line: a random walk whose heading drifts, sometimes with a branch."""
    h, w = image.shape[:2]
    s = min(h, w)
    mask = np.zeros((h, w), np.float32)
    for _ in range(1 + int(rng.random() < 0.3)):
        p = rng.uniform(0.1, 0.9, 2) * (w, h)
        heading = rng.uniform(0, 2 * np.pi)
        pts = [p.copy()]
        for _ in range(int(rng.integers(4, 12))):
            heading += rng.normal(0, 0.5)
            p = p + rng.uniform(s / 24, s / 8) * np.array([np.cos(heading), np.sin(heading)])
            pts.append(p.copy())
        thickness = int(rng.integers(1, max(2, s // 48) + 1))
        cv2.polylines(mask, [np.round(np.array(pts)).astype(np.int32)], False, 1.0, thickness, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.7)
    return _shade(image, mask, rng.uniform(0.25, 0.7)), mask


def scratch(image: np.ndarray, rng: np.random.Generator, _others: Sequence[np.ndarray] | None = None) -> Painted:
    """A thin smooth arc (quadratic Bezier), brighter or darker than the surface."""
    h, w = image.shape[:2]
    a, b, c = (rng.uniform(0, 1, 2) * (w, h) for _ in range(3))
    t = np.linspace(0, 1, 48)[:, None]
    pts = (1 - t) ** 2 * a + 2 * (1 - t) * t * c + t**2 * b
    mask = np.zeros((h, w), np.float32)
    cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, 1.0, int(rng.integers(1, 3)), cv2.LINE_AA)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return _lift(image, mask, sign * rng.uniform(40, 110)), mask


def spot(image: np.ndarray, rng: np.random.Generator, _others: Sequence[np.ndarray] | None = None) -> Painted:
    """A soft-edged elliptical blob (hole, stain, inclusion), darker or brighter."""
    h, w = image.shape[:2]
    s = min(h, w)
    mask = np.zeros((h, w), np.float32)
    centre = tuple(int(v) for v in rng.uniform(0.1, 0.9, 2) * (w, h))
    axes = tuple(int(v) for v in rng.uniform(s / 50, s / 10, 2).clip(1))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.5, min(axes) / 3))
    if rng.random() < 0.65:
        return _shade(image, mask, rng.uniform(0.15, 0.6)), mask
    return _lift(image, mask, rng.uniform(50, 120)), mask


def patch(image: np.ndarray, rng: np.random.Generator, others: Sequence[np.ndarray] | None = None) -> Painted:
    """Cut-and-paste: a rectangle of another good image (or this one), flipped, rotated, re-lit,
    pasted elsewhere with a feathered edge."""
    h, w = image.shape[:2]
    s = min(h, w)
    source = image
    if others is not None and len(others):
        candidate = others[int(rng.integers(len(others)))]
        if candidate.shape[2:] == image.shape[2:] and min(candidate.shape[:2]) >= s // 3:
            source = candidate
    side = int(max(4, min(source.shape[:2]) // 3))
    ph, pw = (int(v) for v in rng.uniform(max(3, s / 12), side, 2))
    y0 = int(rng.integers(0, source.shape[0] - ph + 1))
    x0 = int(rng.integers(0, source.shape[1] - pw + 1))
    piece = source[y0:y0 + ph, x0:x0 + pw].astype(np.float32)
    if rng.random() < 0.5:
        piece = piece[:, ::-1]
    piece = np.rot90(piece, int(rng.integers(0, 4)))
    piece = piece * rng.uniform(0.6, 1.4) + rng.uniform(-30, 30)
    ph, pw = piece.shape[:2]
    if ph > h or pw > w:
        piece = piece[:h, :w]
        ph, pw = piece.shape[:2]
    y1, x1 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    mask = np.zeros((h, w), np.float32)
    mask[y1:y1 + ph, x1:x1 + pw] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), 1.0) * mask
    canvas = image.astype(np.float32)
    canvas[y1:y1 + ph, x1:x1 + pw] = piece.reshape(ph, pw, -1)
    m = mask[:, :, None]
    out = image.astype(np.float32) * (1.0 - m) + canvas * m
    return np.clip(out, 0, 255).astype(np.uint8), mask


KINDS: dict[str, Callable[..., Painted]] = {"crack": crack, "scratch": scratch, "spot": spot, "patch": patch}


def make_pseudo_anomalies(normals: Sequence[np.ndarray], count: int, rng: np.random.Generator,
                          kinds: tuple[str, ...] = tuple(KINDS)
                          ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """``count`` pseudo-anomalous images painted on randomly chosen good ones (any sizes), their
    masks (H, W) float32 in [0, 1] and the index of the good image each was painted on:
    (images, masks, sources)."""
    if len(normals) == 0:
        raise ValueError("pseudo-anomalies need good images to paint on")
    painters = [KINDS[k] for k in kinds]
    images, masks, sources = [], [], []
    for _ in range(count):
        sources.append(int(rng.integers(len(normals))))
        image = normals[sources[-1]]
        mask = np.zeros(image.shape[:2], np.float32)
        for _ in range(1 + int(rng.random() < 0.25)):
            image, painted = painters[int(rng.integers(len(painters)))](image, rng, normals)
            mask = np.maximum(mask, painted)
        images.append(image)
        masks.append(mask)
    return images, masks, sources
