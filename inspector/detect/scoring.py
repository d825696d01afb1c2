"""Scoring with a detector on its device: tiles in batches (``score_tiles``), or whole images for a
fully convolutional detector (``map_images``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from models import Detector

from ..base.progress import Progress, ProgressCallback
from .tensors import pad_to_multiple, to_tensor


@dataclass
class TileScores:
    scores: np.ndarray               # (N,) raw scores
    maps: np.ndarray | None          # (N, S, S) difference maps, or None
    embeddings: np.ndarray | None    # (N, l) for an embedding method, or None


@contextmanager
def evaluating(detector: Detector) -> Iterator[Detector]:
    """The detector in eval mode for the block, then back in the mode it was in.

    ``Detector.infer`` leaves the mode to its caller: batch norm and dropout must be in eval mode to
    score, and scoring in the middle of training (validation) must not leave the model in it.
    """
    was_training = detector.training
    detector.eval()
    try:
        yield detector
    finally:
        detector.train(was_training)


def score_tiles(detector: Detector, tiles: np.ndarray, *, batch_size: int = 64, with_maps: bool = True,
                half: bool = False, progress: ProgressCallback | None = None) -> TileScores:
    """Raw scores (and maps, embeddings) for uint8 tiles (N, S, S, C).

    On a CUDA device the uint8 tiles are pinned and copied without blocking; ``half`` runs the
    model under float16 autocast there (ignored on the CPU).
    """
    device = detector.device
    scores, maps, embs = [], [], []
    cuda = device.type == "cuda"
    with evaluating(detector):
        for start in range(0, len(tiles), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(tiles[start:start + batch_size]))
            if cuda:
                chunk = chunk.pin_memory()
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda and half):
                out = detector.infer(to_tensor(chunk, device))
            scores.append(out.scores.float().cpu().numpy())
            if with_maps and out.maps is not None:
                maps.append(out.maps[:, 0].float().cpu().numpy())
            if out.embeddings is not None:
                embs.append(out.embeddings.float().cpu().numpy())
            if progress is not None:
                progress(Progress("score", min(start + batch_size, len(tiles)), len(tiles)))
    return TileScores(
        scores=np.concatenate(scores) if scores else np.zeros(0, np.float32),
        maps=np.concatenate(maps) if maps else None,
        embeddings=np.concatenate(embs) if embs else None,
    )


#: A fully convolutional detector sees at most this many pixels at once (bounds its activations'
#: memory); a larger image goes through in overlapping windows.
MAX_PASS_PIXELS = 2_000_000
#: Each window's border cut off when windows are stitched: a cell this far from a window's edge sees
#: nearly all the context it would see in one pass (a deep stage's receptive field is wider still).
WINDOW_MARGIN = 128


@dataclass
class ImageMap:
    """A fully convolutional detector's answer for one image: its anomaly map (one cell per
    ``map_stride`` pixels, the padding cut off) and, for an embedding method, each cell's code."""

    map: np.ndarray                       # (h, w) float32 in score units
    embeddings: np.ndarray | None = None  # (h, w, l) or None


def _valid(size: int, stride: int) -> int:
    return -(-size // stride)


Forward = Callable[[torch.Tensor], torch.Tensor]


def _run(detector: Detector, forward: Forward, images: list[np.ndarray], half: bool) -> list[torch.Tensor]:
    """One pass of ``forward`` over same-size images padded together: each output's valid part
    (K, h, w), on the CPU."""
    h, w = images[0].shape[:2]
    batch = torch.from_numpy(np.stack([pad_to_multiple(img, detector.side_multiple) for img in images]))
    device = detector.device
    if device.type == "cuda":
        batch = batch.pin_memory()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda" and half):
        out = forward(to_tensor(batch, device))
    hv, wv = _valid(h, detector.map_stride), _valid(w, detector.map_stride)
    return list(out[:, :, :hv, :wv].cpu().unbind(0))


def _run_windows(detector: Detector, forward: Forward, image: np.ndarray, half: bool) -> torch.Tensor:
    """An image too large for one pass: overlapping windows, each window's margin cut off."""
    stride, multiple = detector.map_stride, detector.side_multiple
    margin = -(-WINDOW_MARGIN // multiple) * multiple
    side = max(4 * margin, int(MAX_PASS_PIXELS ** 0.5) // multiple * multiple)
    h, w = image.shape[:2]
    full: torch.Tensor | None = None
    step = side - 2 * margin
    for y0 in range(0, max(1, h - 2 * margin), step):
        for x0 in range(0, max(1, w - 2 * margin), step):
            part = _run(detector, forward, [image[y0:y0 + side, x0:x0 + side]], half)[0]
            if full is None:
                full = torch.zeros(part.shape[0], _valid(h, stride), _valid(w, stride), dtype=part.dtype)
            # keep the window's middle, and its outer edges where they are the image's edges
            ty = 0 if y0 == 0 else margin // stride
            tx = 0 if x0 == 0 else margin // stride
            by = part.shape[1] if y0 + side >= h else (side - margin) // stride
            bx = part.shape[2] if x0 + side >= w else (side - margin) // stride
            fy, fx = y0 // stride, x0 // stride
            full[:, fy + ty:fy + by, fx + tx:fx + bx] = part[:, ty:by, tx:bx]
    return full


def whole_images(detector: Detector, forward: Forward, images: list[np.ndarray], *, half: bool = False,
                 progress: ProgressCallback | None = None, stage: str = "score") -> list[torch.Tensor]:
    """``forward`` (a fully convolutional function of the detector: its maps, its features) over uint8
    images (H, W, C) of any sizes: for each, the output's valid part (K, h, w), on the CPU.

    Images of one size go through together (up to ``MAX_PASS_PIXELS`` a pass); each is padded to the
    detector's multiple and its output cut back to the image; a larger image goes in windows.
    Order is kept.
    """
    results: list[torch.Tensor | None] = [None] * len(images)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        by_size.setdefault(img.shape, []).append(i)
    done = 0
    with evaluating(detector):
        for shape, members in by_size.items():
            pixels = shape[0] * shape[1]
            if pixels > MAX_PASS_PIXELS:
                for i in members:
                    results[i] = _run_windows(detector, forward, images[i], half)
            else:
                per_pass = max(1, MAX_PASS_PIXELS // pixels)
                for start in range(0, len(members), per_pass):
                    group = members[start:start + per_pass]
                    for i, out in zip(group, _run(detector, forward, [images[i] for i in group], half), strict=True):
                        results[i] = out
            done += len(members)
            if progress is not None:
                progress(Progress(stage, done, len(images)))
    return results  # type: ignore[return-value]


def map_images(detector: Detector, images: list[np.ndarray], *, half: bool = False,
               progress: ProgressCallback | None = None) -> list[ImageMap]:
    """Anomaly maps (and embeddings, for an embedding method) of uint8 images of any sizes."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = detector.infer(x)
        if out.embeddings is not None and out.embeddings.dim() == 4:
            return torch.cat([out.maps, out.embeddings.to(out.maps.dtype)], dim=1)
        return out.maps

    answers = []
    for out in whole_images(detector, forward, images, half=half, progress=progress):
        out = out.float().numpy()
        answers.append(ImageMap(out[0], out[1:].transpose(1, 2, 0) if len(out) > 1 else None))
    return answers
