"""EDE on features — the two shared encoder-decoder-encoder paths of ``ede`` on a frozen backbone's
standardised patch descriptors instead of pixels (seeds/ede-shared-autoencoders.txt; METHODS.md
section 3), as ``agad_features`` is AGAD's game on them.

E1 and E2 take a descriptor map (B, D, h, w) to a latent map at half its resolution, D1 and D2 take
it back (``agad_features``' bottleneck); EDE1 = E1 -> D1 -> E2 and EDE2 = E1 -> D2 -> E2 share E1 and
E2.  The losses, the 1/n schedule counted in passes over the training images, the bounded game and
the joint update are ``ede``'s.  The margin is in the units of the standardised descriptors' mean
squared error (a good cell's error is a few tenths; ``margin=None`` is the paper's unbounded game).

Score map: per cell, the channels' mean of w1 (x - x2)^2 + (1 - w1) (x - x1')^2 (``score_w1`` = 0,
the error after both paths, as ``ede``'s default); an image's score is its map's maximum after the
pipeline's smoothing.  A batch's padded cells are left out of every loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .agad_features import StandardisedFeatures, feature_decoder, feature_encoder, masked_mean, pad_even
from .base import Inference, TrainBatch, TrainingDefaults, register
from .ede import Passes, ede_losses, joint_update
from .features import map_max


def masked_mse(valid: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Mean squared error over the valid cells (B, 1, h, w), brought to each term's resolution."""
    def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        v = valid
        if v is not None and v.shape[-2:] != a.shape[-2:]:
            v = F.interpolate(v.to(a.dtype), size=a.shape[-2:], mode="nearest")
        return masked_mean((a - b).pow(2), v)
    return mse


@register
class EDEFeatures(StandardisedFeatures):
    method = "ede_features"
    defaults = TrainingDefaults(epochs=10, steps_per_epoch=50, batch_size=8, size=None)
    #: The map smoothed 12 cells before its maximum is taken (one cell before): every validation split
    #: preferred it (casting 0.753 -> 0.829, magnetic tile 0.773 -> 0.812, brickwork 0.871 -> 0.904), and
    #: on test, three seeds, casting 0.755 -> 0.847, magnetic tile 0.733 -> 0.738, brickwork 0.884 -> 0.918.
    default_smoothing = 12.0

    def __init__(self, *, size: int | None = None, channels: int = 3, backbone: str = "efficientnet_lite0",
                 stages: Sequence[int] | None = None, pool: int = 3, lr: float = 2e-4, hidden: int = 128,
                 latent: int = 64, alpha: float = 1.0, beta: float = 0.0, margin: float | None = 0.2,
                 score_w1: float = 0.0, adversarial: bool = True) -> None:
        super().__init__(size=size, channels=channels, backbone=backbone, stages=stages, pool=pool)
        if margin is not None and not margin > 0:
            raise ValueError(f"margin must be positive, got {margin}")
        if not 0.0 <= score_w1 <= 1.0:
            raise ValueError(f"score_w1 must be in [0, 1], got {score_w1}")
        d = self.feature_dim
        self.E1, self.E2 = feature_encoder(d, hidden, latent), feature_encoder(d, hidden, latent)
        self.D1, self.D2 = feature_decoder(latent, hidden, d), feature_decoder(latent, hidden, d)
        self.lr, self.alpha, self.beta, self.margin = lr, alpha, beta, margin
        self.score_w1, self.adversarial = score_w1, adversarial

    def passes(self, x: torch.Tensor) -> Passes:
        """The two paths over standardised descriptors whose sides are even."""
        z = self.E1(x)
        x1, x2 = self.D1(z), self.D2(z)
        z1, z2 = self.E2(x1), self.E2(x2)
        x1p = self.D1(z2)
        return Passes(z, x1, x2, z1, z2, x1p, self.E2(x1p))

    def make_optimizers(self) -> None:
        params = [*self.E1.parameters(), *self.E2.parameters(), *self.D1.parameters(), *self.D2.parameters()]
        self.optimizers = [torch.optim.Adam(params, lr=self.lr, betas=(0.5, 0.999))]

    def training_step(self, batch: TrainBatch, *, epoch: int, epochs: int) -> dict[str, float]:
        x = pad_even(self._standardise(batch.normal))
        valid = None if batch.normal_valid is None else pad_even(batch.normal_valid.to(x.dtype))
        losses = ede_losses(x, self.passes(x), batch.data_pass, self.alpha, self.beta, self.adversarial,
                            self.margin, mse=masked_mse(valid))
        shared = [*self.E1.parameters(), *self.E2.parameters()]
        joint_update(self.optimizers[0], losses,
                     [[*shared, *self.D1.parameters()], [*shared, *self.D2.parameters()]])
        return {"loss1": losses[0].item(), "loss2": losses[1].item(), "pass": float(batch.data_pass)}

    def score_features(self, features: torch.Tensor) -> Inference:
        h, w = features.shape[-2:]
        x = pad_even(self._standardise(features))
        p = self.passes(x)
        maps = (self.score_w1 * (x - p.x2).pow(2) + (1 - self.score_w1) * (x - p.x1p).pow(2)).mean(1, keepdim=True)
        maps = maps[..., :h, :w]
        return Inference(scores=map_max(maps), maps=maps)
