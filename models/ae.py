"""Convolutional autoencoder baseline (seeds/autoencoder-primer.txt; METHODS.md section 4).

Trained on normal tiles only to reconstruct them through a narrow bottleneck; a defect, never
seen in training, is reconstructed badly.  Score = mean squared reconstruction error of the tile;
difference map = |x - AE(x)| averaged over channels; ``score_sigma`` scores the smoothed map's peak
instead (``map_score``).  The reference every other method must beat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Detector, Inference, TrainBatch, TrainingDefaults, register
from .blocks import Decoder, Encoder
from .map_score import check_sigma, reconstruction_inference


@register
class AutoEncoder(Detector):
    method = "ae"
    has_difference_map = True
    defaults = TrainingDefaults(epochs=30, steps_per_epoch=50, batch_size=64, size=64)

    def __init__(self, *, size: int = 64, channels: int = 3, latent: int = 128,
                 base_width: int = 16, lr: float = 1e-3, score_sigma: float | None = None) -> None:
        super().__init__(size=size, channels=channels)
        check_sigma(score_sigma)
        self.score_sigma = score_sigma
        self.encoder = Encoder(size=size, channels=channels, latent=latent, base_width=base_width)
        self.decoder = Decoder(size=size, channels=channels, latent=latent, base_width=base_width)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def make_optimizers(self) -> None:
        self.optimizers = [torch.optim.Adam(self.parameters(), lr=self.lr, betas=(0.5, 0.999))]

    def training_step(self, batch: TrainBatch, *, epoch: int, epochs: int) -> dict[str, float]:
        (opt,) = self.optimizers
        loss = F.mse_loss(self(batch.normal), batch.normal)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> Inference:
        return reconstruction_inference(x, self(x), self.score_sigma)
