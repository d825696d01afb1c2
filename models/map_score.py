"""A tile's score from its reconstruction: the papers' mean error, or the peak of its smoothed difference map.

The reconstruction methods (AE, AGAD, EDE) score a tile by its mean squared error, which a defect
covering a few of the tile's pixels barely moves.  With ``score_sigma`` a tile is scored instead by
the largest value of its difference map after Gaussian smoothing by sigma pixels — as the methods on
backbone features score their maps — so a small, strong difference counts and a single noisy pixel
does not.  None keeps the paper's score.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Inference


def check_sigma(sigma: float | None) -> None:
    if sigma is not None and not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"score_sigma must be None or a number >= 0, got {sigma}")


def smoothed_peak(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each map's (B, 1, H, W) largest value after Gaussian smoothing by ``sigma`` pixels (B,).

    Separable, edges mirrored; the kernel is cut at three sigma or at the map's side.
    """
    if sigma > 0:
        side = min(maps.shape[-2:])
        radius = max(1, min(math.ceil(3 * sigma), side - 1))
        offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = kernel / kernel.sum()
        maps = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
        maps = F.conv2d(F.pad(maps, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return maps.flatten(1).amax(dim=1)


def tile_scores(squared_error: torch.Tensor, maps: torch.Tensor, sigma: float | None) -> torch.Tensor:
    """The mean of ``squared_error`` (B, C, H, W) per tile, or with ``sigma`` the smoothed peak of ``maps``."""
    if sigma is None:
        return squared_error.flatten(1).mean(dim=1)
    return smoothed_peak(maps, sigma)


def reconstruction_inference(x: torch.Tensor, reconstruction: torch.Tensor, sigma: float | None) -> Inference:
    """A single reconstruction's answer (the AE's, AGAD's): map |x - x^| averaged over channels, and
    ``tile_scores`` of the squared error."""
    diff = (x - reconstruction).abs()
    maps = diff.mean(dim=1, keepdim=True)
    return Inference(scores=tile_scores(diff.pow(2), maps, sigma), maps=maps)
