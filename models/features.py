"""Patch features from a frozen backbone, and the base of the detectors that work on them.

A patch descriptor (PatchCore, Roth et al. 2022): the chosen stages' feature maps, each averaged
over its 3 x 3 neighbourhood (so a patch also sees around itself), brought to one grid of cells of
the finest stage's stride (bilinear) and concatenated.  With EfficientNet-Lite0's stages 3 and 6
that is 232 numbers for every 8 x 8 pixels of the image (the default; ``stages=None`` is each
backbone's own: Lite0's 3 and 6, a ResNet's layers 2 and 3 as in the PatchCore paper).

A cell of a stage's map does not look at the pixels its grid position suggests: measured, Lite0's
stage-3 cells are centred 7 pixels up and left of their 8 x 8 square, stage 5's 14 pixels (padding
and learned kernels shift them).  Left as it is, a heat map stands a cell or two below and right of
the defect.  ``PatchFeatures.align`` measures each stage's shift once, from the centroid of its
effective receptive field (the gradient of one cell with respect to the input), and the grid
sampling undoes it, so cell (i, j) describes pixels [8i, 8i + 8) x [8j, 8j + 8).  The shifts are
part of the model's state and travel in its file.

A ``FeatureDetector`` is fully convolutional: it takes images of any size (multiples of
``side_multiple``; the pipeline pads), runs the backbone once over the whole image and scores every
patch.  Its training runs on features computed once per training image (``trains_on =
"features"``): the backbone never trains, so it need not run again each step.  A memory bank is
fitted in one pass (``fit_features``); a head with weights (EIDN) is trained by the engine on
batches of those features.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone, build_backbone
from .base import Detector, Inference, TrainBatch


class PatchFeatures(nn.Module):
    """Image (B, C, H, W) -> patch descriptors (B, D, H / stride, W / stride)."""

    def __init__(self, backbone: str = "efficientnet_lite0", stages: Sequence[int] | None = None,
                 pool: int = 3) -> None:
        super().__init__()
        if pool < 1 or pool % 2 == 0:
            raise ValueError(f"the neighbourhood pool must be an odd number, got {pool}")
        self.backbone: Backbone = build_backbone(backbone, stages).freeze()
        self.pool = pool
        #: Per stage, (y, x): where its cells' receptive fields are centred, in input pixels, relative to
        #: the centres of the squares they stand for (``align``).
        self.register_buffer("centre_offsets", torch.zeros(len(self.backbone.stages), 2))

    @property
    def dim(self) -> int:
        return sum(self.backbone.out_channels)

    @property
    def stride(self) -> int:
        return self.backbone.out_strides[0]

    @property
    def side_multiple(self) -> int:
        return self.backbone.stride_multiple

    @torch.no_grad()
    def align(self, probe: int = 256) -> torch.Tensor:
        """Measure each stage's centre offsets with the backbone's current weights (call it once the
        ImageNet weights are in): the centroid of |d cell / d input| for the middle cell of a noise image."""
        device = self.centre_offsets.device
        x = (0.2 * torch.randn(1, 3, probe, probe, generator=torch.Generator().manual_seed(0))).to(device)
        x.requires_grad_(True)
        ys = torch.arange(probe, device=device, dtype=torch.float32)
        with torch.enable_grad():
            maps = self.backbone(x)
            for k, (m, stride) in enumerate(zip(maps, self.backbone.out_strides, strict=True)):
                cy, cx = m.shape[-2] // 2, m.shape[-1] // 2
                (grad,) = torch.autograd.grad(m[0, :, cy, cx].pow(2).sum(), x, retain_graph=k + 1 < len(maps))
                weight = grad.abs().sum(dim=(0, 1))
                centroid = torch.stack([(weight.sum(1) * ys).sum(), (weight.sum(0) * ys).sum()]) / weight.sum()
                ideal = torch.tensor([cy, cx], device=device, dtype=torch.float32) * stride + (stride - 1) / 2
                self.centre_offsets[k] = centroid - ideal
        return self.centre_offsets

    def _sampling_grid(self, k: int, stage_shape: tuple[int, int], out_shape: tuple[int, int],
                       batch: int) -> torch.Tensor:
        """grid_sample's grid that takes stage ``k``'s map (``stage_shape``) to the output cells
        (``out_shape``, ``self.stride`` pixels each), its centre offsets undone."""
        stride, out_stride = self.backbone.out_strides[k], self.stride
        device = self.centre_offsets.device
        coords = []
        for axis in (1, 0):                         # grid_sample wants (x, y)
            centres = torch.arange(out_shape[axis], device=device) * out_stride + (out_stride - 1) / 2
            index = (centres - self.centre_offsets[k, axis] - (stride - 1) / 2) / stride
            coords.append((2 * index + 1) / stage_shape[axis] - 1)       # align_corners=False
        gy, gx = torch.meshgrid(coords[1], coords[0], indexing="ij")
        return torch.stack([gx, gy], dim=-1).expand(batch, -1, -1, -1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(x)
        size = maps[0].shape[-2:]
        out = []
        for k, m in enumerate(maps):
            if self.pool > 1:
                m = F.avg_pool2d(m, self.pool, 1, self.pool // 2, count_include_pad=False)
            if m.shape[-2:] != size or bool(self.centre_offsets[k].any()):
                grid = self._sampling_grid(k, tuple(m.shape[-2:]), tuple(size), m.shape[0]).to(m.dtype)
                m = F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=False)
            out.append(m)
        return torch.cat(out, dim=1)


class FeatureDetector(Detector):
    """A detector on the patch features of a frozen ImageNet backbone (fully convolutional)."""

    trains_on = "features"
    has_difference_map = True
    #: The anomaly map's Gaussian smoothing, in cells, before an image's score is taken (its maximum):
    #: each method's own, chosen on validation splits (every concrete method sets it).
    default_smoothing: ClassVar[float]

    def __init__(self, *, size: int | None = None, channels: int = 3, backbone: str = "efficientnet_lite0",
                 stages: Sequence[int] | None = None, pool: int = 3) -> None:
        if size is not None:
            raise ValueError("a detector on backbone features takes images of any size: leave size unset")
        super().__init__(size=None, channels=channels)
        self.patch_features = PatchFeatures(backbone, None if stages is None else tuple(stages), pool)

    def hparams(self) -> dict:
        """The stages actually built, not None: a later default can never change what a file means."""
        return super().hparams() | {"stages": list(self.patch_features.backbone.stages)}

    @property
    def side_multiple(self) -> int:
        return self.patch_features.side_multiple

    @property
    def map_stride(self) -> int:
        return self.patch_features.stride

    @property
    def feature_dim(self) -> int:
        return self.patch_features.dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch descriptors of images (B, C, H, W) -> (B, D, H / map_stride, W / map_stride)."""
        return self.patch_features(x)

    @abc.abstractmethod
    def score_features(self, features: torch.Tensor) -> Inference:
        """Scores and maps from patch descriptors (B, D, h, w): maps (B, 1, h, w) in score units."""

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> Inference:
        return self.score_features(self.features(x))

    def make_optimizers(self) -> None:
        self.optimizers = []

    def training_step(self, batch: TrainBatch, *, epoch: int, epochs: int) -> dict[str, float]:
        raise NotImplementedError(f"{self.method} is fitted with fit_features, not trained step by step")

    def begin_training(self, normal: list[torch.Tensor]) -> list[torch.Tensor]:
        """Before the first step of a method trained step by step: see the good images' descriptors
        (D, h, w) once (to standardise them, say).  Returns them in ``training_form``."""
        return normal

    def training_form(self, maps: list[torch.Tensor], painted_on: list[int | None]) -> list[torch.Tensor]:
        """Descriptors (D, h, w) as the training steps take them, each with the index into
        ``begin_training``'s goods of the good image it is or was painted on (None: another image)."""
        return maps

    def fit_features(self, normal: list[torch.Tensor], *, generator: torch.Generator | None = None) -> dict:
        """A gradient-free method: fit on the patch descriptors (D, h, w) of the good training images."""
        raise NotImplementedError(f"{self.method} trains step by step")


def map_max(maps: torch.Tensor) -> torch.Tensor:
    """A map's maximum per image (B, 1, h, w) -> (B,)."""
    return maps.flatten(1).amax(dim=1)
