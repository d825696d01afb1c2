"""Image data sets in the MVTec AD layout, and loading them as model-sized tiles.

A tile method sees each image either whole, resized to one tile (``load_tiles``), or cut on the
grid that inspection with ``--tile`` cuts it on (``load_grid_tiles``), so that training,
calibration and inspection see the surface at one scale.

```
<root>/train/good/                      defect-free training images
<root>/train/defect/<type>/             optional pool of labelled defects
<root>/test/good/, <root>/test/<type>/  test images
<root>/ground_truth/<type>/<stem>_mask.png   optional pixel masks of test defects
```
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..base.errors import InspectorError
from ..detect.tensors import at_scale, fit_tile
from ..detect.tiling import cut_tiles, plan_grid
from ..frames.images import ImageReadError, decode_workers, is_grey, is_image_file, read_image
from ..frames.listing import display_name, walk

log = logging.getLogger(__name__)

GOOD = "good"


class DatasetError(InspectorError):
    """A data folder that cannot be used (missing, empty, wrong layout); the message says why."""


@dataclass(frozen=True)
class TestItem:
    path: Path
    label: str                 # "good" or the defect type
    mask: Path | None = None   # ground-truth mask, where the set has one

    @property
    def is_defect(self) -> bool:
        return self.label != GOOD


@dataclass
class MVTecSet:
    root: Path
    train_good: list[Path]
    train_defect: list[tuple[Path, str]]
    test: list[TestItem] = field(default_factory=list)

    @property
    def has_masks(self) -> bool:
        return any(item.mask is not None for item in self.test)


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder``, recursively, in a stable sorted order.

    Entries that are not image files (by name), or cannot be read (broken links, FIFOs, ...), are
    left out and logged; a training set is a folder of images, not a folder to account for.
    """
    if not folder.is_dir():
        return []
    images = []
    for entry in walk(folder):
        if entry.readable and is_image_file(entry.path):
            images.append(Path(entry.path))
        elif entry.skip is None:
            log.warning("%s: left out of the data set (%s)", display_name(entry.path), entry.error or "not an image")
    return images


def discover(root: str | Path, *, need_train: bool = True, need_test: bool = False) -> MVTecSet:
    """The data set under ``root``; ``need_train`` / ``need_test``: refuse one without that split.

    Scoring a set (``eval``) needs only ``test/``; training needs ``train/good``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder not found: {root}")
    good_dir = root / "train" / GOOD
    train_good = list_images(good_dir)
    if need_train and not train_good:
        raise DatasetError(f"no training images: {good_dir} is missing or holds no image files")
    defect_root = root / "train" / "defect"
    train_defect = [(p, p.relative_to(defect_root).parts[0]) for p in list_images(defect_root)
                    if len(p.relative_to(defect_root).parts) > 1]
    test: list[TestItem] = []
    test_root = root / "test"
    if test_root.is_dir():
        for type_dir in sorted(d for d in test_root.iterdir() if d.is_dir()):
            for p in list_images(type_dir):
                mask = None
                if type_dir.name != GOOD:
                    candidate = root / "ground_truth" / type_dir.name / f"{p.stem}_mask.png"
                    mask = candidate if candidate.is_file() else None
                test.append(TestItem(p, type_dir.name, mask))
    if need_test and (not any(t.is_defect for t in test) or all(t.is_defect for t in test)):
        raise DatasetError(f"{test_root} needs both good and defective images to measure detection")
    return MVTecSet(root, train_good, train_defect, test)


@dataclass
class LoadedTiles:
    tiles: np.ndarray                  # (N, S, S, C) uint8
    paths: list[Path]                  # the files that were read, in the order of ``tiles``
    shapes: list[tuple[int, int]]      # original (H, W) of each image
    errors: list[tuple[Path, str]]     # files skipped, with the reason


@dataclass
class LoadedImages:
    images: list[np.ndarray]           # uint8 (H, W, C) at the scale asked for, aspect ratio kept
    paths: list[Path]                  # the files that were read, in the order of ``images``
    shapes: list[tuple[int, int]]      # original (H, W) of each image
    errors: list[tuple[Path, str]]     # files skipped, with the reason


def _load_each(paths: Sequence[Path], prepare: Callable[[np.ndarray], np.ndarray],
               progress: Callable[[int, int], None] | None, workers: int | None
               ) -> tuple[list[np.ndarray], list[Path], list[tuple[int, int]], list[tuple[Path, str]]]:
    """Decode images in a thread pool (OpenCV releases the GIL) and ``prepare`` each: (prepared, the
    paths read, their original (H, W), the files skipped with the reason — each logged)."""
    def load(path: Path):
        img = read_image(path)
        return prepare(img), img.shape[:2]

    done, kept, shapes, errors = [], [], [], []
    with ThreadPoolExecutor(max_workers=workers or decode_workers()) as pool:
        futures = [pool.submit(load, p) for p in paths]
        for i, (path, fut) in enumerate(zip(paths, futures, strict=True)):
            try:
                item, shape = fut.result()
            except ImageReadError as exc:
                errors.append((path, str(exc).removeprefix(f"{path}: ")))
                log.warning("skipped unreadable image %s", exc)
            else:
                done.append(item)
                kept.append(path)
                shapes.append(shape)
            if progress:
                progress(i + 1, len(paths))
    if errors:
        log.warning("%d of %d images could not be read and were skipped", len(errors), len(paths))
    return done, kept, shapes, errors


def load_tiles(paths: Sequence[Path], *, size: int, channels: int,
               progress: Callable[[int, int], None] | None = None,
               workers: int | None = None) -> LoadedTiles:
    """Each image resized whole to one ``size`` tile; unreadable files skipped and returned in ``errors``."""
    tiles, kept, shapes, errors = _load_each(paths, lambda img: fit_tile(img, size, channels), progress, workers)
    arr = np.stack(tiles) if tiles else np.zeros((0, size, size, channels), np.uint8)
    return LoadedTiles(arr, kept, shapes, errors)


def load_grid_tiles(paths: Sequence[Path], *, size: int, tile: int, stride: int | None, channels: int,
                    max_tiles: int, progress: Callable[[int, int], None] | None = None,
                    workers: int | None = None) -> LoadedTiles:
    """The tiles of each image on its inspection grid (``tiling.plan_grid`` with ``tile`` and ``stride``
    frame pixels, each tile resized to ``size``), at most ``max_tiles`` in all: an image with more than
    its share keeps tiles spread evenly over its grid.  ``paths`` in the result holds one entry per tile."""
    share = max(1, -(-max_tiles // max(1, len(paths))))

    def cut(img: np.ndarray) -> np.ndarray:
        tiles = cut_tiles(img, plan_grid(img.shape[:2], size, tile=tile, stride=stride), channels)
        if len(tiles) > share:
            tiles = tiles[np.linspace(0, len(tiles) - 1, share).round().astype(int)]
        return tiles

    cuts, kept, shapes, errors = _load_each(paths, cut, progress, workers)
    if not cuts:
        return LoadedTiles(np.zeros((0, size, size, channels), np.uint8), [], [], errors)
    return LoadedTiles(np.concatenate(cuts), [p for p, c in zip(kept, cuts, strict=True) for _ in range(len(c))],
                       [s for s, c in zip(shapes, cuts, strict=True) for _ in range(len(c))], errors)


def load_images(paths: Sequence[Path], *, scale: float = 1.0, channels: int = 3,
                progress: Callable[[int, int], None] | None = None, workers: int | None = None) -> LoadedImages:
    """Each image brought to ``scale`` (``tensors.at_scale``, the resampling inspection uses);
    unreadable files skipped and returned in ``errors``."""
    return LoadedImages(*_load_each(paths, lambda img: at_scale(img, scale, channels), progress, workers))


def detect_channels(paths: Sequence[Path], sample: int = 16) -> int:
    """1 when the sampled images are all grey (grey files or colour files with equal channels)."""
    step = max(1, len(paths) // sample)
    for p in list(paths)[::step][:sample]:
        try:
            if not is_grey(read_image(p)):
                return 3
        except ImageReadError:
            continue
    return 1


def split_holdout(paths: Sequence[Path], fraction: float, rng: np.random.Generator,
                  minimum: int = 8) -> tuple[list[Path], list[Path]]:
    """Split (train, held-out) with ``fraction`` held out (at least ``minimum``, at most half)."""
    n = len(paths)
    n_hold = min(max(int(round(n * fraction)), minimum), n // 2)
    if n_hold < 1:
        raise DatasetError(f"need at least 2 good training images to hold one out for calibration, got {n}")
    order = rng.permutation(n)
    hold = sorted(order[:n_hold])
    train = sorted(order[n_hold:])
    return [paths[i] for i in train], [paths[i] for i in hold]


def defects_for_fraction(pool: Sequence[tuple[Path, str]], n_good: int, fraction: float,
                         rng: np.random.Generator) -> list[Path]:
    """Draw a labelled defects so that a / (n_good + a) = ``fraction`` (the AGAD paper's ratio)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"anomaly fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return []
    want = max(1, int(round(fraction * n_good / (1.0 - fraction))))
    if want > len(pool):
        log.warning("asked for %d labelled defects, the pool has %d: using all of them", want, len(pool))
        want = len(pool)
    if want == 0:
        return []
    idx = rng.choice(len(pool), size=want, replace=False)
    return [pool[i][0] for i in sorted(idx)]
