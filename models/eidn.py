"""EIDN — Enforced Isolation Deep Network (seeds/eidn.txt; METHODS.md section 1).

A CNN ``f`` maps a tile to a point in R^l (eq. 1 and 6; l = 2 so that the embedding can be
plotted).  The refined triplet loss (eq. 2) pulls normal tiles to the origin and anomalous ones to
the one-vector, with anchors y in {0, 1} (eq. 3) and positives / negatives drawn by the random
triplet sampling of eq. 4-5.  Score = ||f(x)||_2, the distance from the origin.

The paper's Fig. 4 network is not recoverable from the text; ``f`` here is a small conv stack of
the same spirit (conv, BN, LeakyReLU, a dense head).  EIDN needs anomalous samples: labelled
defects where there are some, synthetic pseudo-anomalies from the training engine otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Detector, Inference, TrainBatch, TrainingDefaults, register
from .blocks import down, widths


def triplet_loss(y: torch.Tensor, f_pos: torch.Tensor, f_neg: torch.Tensor,
                 alpha: float) -> torch.Tensor:
    """Eq. 2: sum_i max(0, ||y_i - f(xp_i)||^2 - ||y_i - f(xn_i)||^2 + alpha)."""
    d_pos = (y - f_pos).pow(2).sum(dim=1)
    d_neg = (y - f_neg).pow(2).sum(dim=1)
    return torch.clamp(d_pos - d_neg + alpha, min=0).sum()


def sample_triplets(normal: torch.Tensor, anomalous: torch.Tensor, generator: torch.Generator | None = None):
    """Random triplet sampling (eq. 3-5) over M = min(|normal|, |anomalous|) rows.

    For each i the anchor y_i is the zero or the one vector with equal odds; if y_i = 0 the
    positive is a normal sample and the negative an anomaly, else the other way round.  Returns
    ``(y_is_one, x_pos, x_neg)`` with ``y_is_one`` a bool vector.
    """
    m = min(len(normal), len(anomalous))
    y_is_one = torch.rand(m, device=normal.device, generator=generator) < 0.5
    sel = y_is_one.view(-1, 1, 1, 1)
    x_pos = torch.where(sel, anomalous[:m], normal[:m])
    x_neg = torch.where(sel, normal[:m], anomalous[:m])
    return y_is_one, x_pos, x_neg


class EmbeddingNet(nn.Module):
    """f: tile (B, C, S, S) -> R^l."""

    def __init__(self, *, size: int, channels: int, embedding_dim: int, base_width: int,
                 max_width: int = 128, hidden: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for i, w in enumerate(widths(size, base_width, max_width)):
            layers.append(down(cin, w, bn=i > 0))
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * 4 * 4, hidden),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, embedding_dim),
        )

    def forward(self, x):
        return self.head(self.features(x))


@register
class EIDN(Detector):
    method = "eidn"
    uses_anomalies = True
    needs_anomalies = True
    # The paper's schedule: 50 epochs x 100 steps x 128 triplets, Adam, 32x32 inputs.  64x64 tiles
    # with a shorter schedule measured worse on magnetic tiles (README, "EIDN settings").
    defaults = TrainingDefaults(epochs=50, steps_per_epoch=100, batch_size=128, size=32)

    def __init__(self, *, size: int = 32, channels: int = 3, embedding_dim: int = 2,
                 alpha: float = 0.2, base_width: int = 16, lr: float = 1e-3) -> None:
        super().__init__(size=size, channels=channels)
        self.f = EmbeddingNet(size=size, channels=channels, embedding_dim=embedding_dim,
                              base_width=base_width)
        self.alpha = alpha
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)

    def make_optimizers(self) -> None:
        self.optimizers = [torch.optim.Adam(self.parameters(), lr=self.lr)]

    def training_step(self, batch: TrainBatch, *, epoch: int, epochs: int) -> dict[str, float]:
        if batch.anomalous is None or len(batch.anomalous) == 0:
            raise ValueError("EIDN trains on triplets and needs anomalous samples in every batch")
        (opt,) = self.optimizers
        y_is_one, x_pos, x_neg = sample_triplets(batch.normal, batch.anomalous)
        m = len(y_is_one)
        # One forward pass over positives and negatives, so batch norm sees both classes.
        emb = self.f(torch.cat([x_pos, x_neg]))
        y = y_is_one.to(emb.dtype).view(-1, 1).expand(m, emb.shape[1])
        loss = triplet_loss(y, emb[:m], emb[m:], self.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item() / m}

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> Inference:
        emb = self.f(x)
        return Inference(scores=emb.norm(dim=1), embeddings=emb)
