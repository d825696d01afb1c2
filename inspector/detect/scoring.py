"""Scoring tiles with a detector in batches, on the detector's device."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from models import Detector

from ..base.progress import Progress, ProgressCallback
from .tensors import to_tensor


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
