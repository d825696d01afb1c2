"""Convolutional building blocks shared by the detectors (DCGAN / GANomaly style).

Each stride-2 layer halves (or doubles) the spatial size with a 4x4 kernel, so a tile of size S
goes down to 4x4 in log2(S/4) layers; the width doubles per layer from ``base_width`` up to
``max_width``.
"""

from __future__ import annotations

import math

from torch import nn


def down(cin: int, cout: int, *, bn: bool = True) -> nn.Sequential:
    """Conv k4 s2 p1 [+ BN] + LeakyReLU(0.2): halves the spatial size."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def up(cin: int, cout: int, *, bn: bool = True) -> nn.Sequential:
    """ConvTranspose k4 s2 p1 [+ BN] + ReLU: doubles the spatial size."""
    layers: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def widths(size: int, base_width: int, max_width: int) -> list[int]:
    """Channel widths of the stride-2 layers that take a ``size`` tile down to 4x4."""
    n = int(math.log2(size // 4))
    if 4 * 2**n != size:
        raise ValueError(f"tile size must be 4 times a power of two, got {size}")
    return [min(base_width * 2**i, max_width) for i in range(n)]


class Encoder(nn.Module):
    """Image (B, C, S, S) -> latent (B, latent, 1, 1): stride-2 convs to 4x4, then a 4x4 conv.

    The first layer has no batch norm (DCGAN practice); ``final`` is applied to the latent code
    (EDE's encoders end in Tanh).
    """

    def __init__(self, *, size: int, channels: int, latent: int, base_width: int = 32,
                 max_width: int = 256, final: nn.Module | None = None) -> None:
        super().__init__()
        ws = widths(size, base_width, max_width)
        layers: list[nn.Module] = []
        cin = channels
        for i, w in enumerate(ws):
            layers.append(down(cin, w, bn=i > 0))
            cin = w
        self.features = nn.Sequential(*layers)
        self.to_latent = nn.Conv2d(cin, latent, 4, 1, 0)
        self.final = final if final is not None else nn.Identity()
        self.out_width = cin

    def forward(self, x):
        return self.final(self.to_latent(self.features(x)))


class Decoder(nn.Module):
    """Latent (B, latent, 1, 1) -> image (B, C, S, S) in [-1, 1]: the Encoder's mirror, Tanh out."""

    def __init__(self, *, size: int, channels: int, latent: int, base_width: int = 32,
                 max_width: int = 256) -> None:
        super().__init__()
        ws = widths(size, base_width, max_width)[::-1]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent, ws[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(ws[0]),
            nn.ReLU(inplace=True),
        ]
        for cin, cout in zip(ws, ws[1:], strict=False):
            layers.append(up(cin, cout))
        layers += [nn.ConvTranspose2d(ws[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)
