"""EDE — two encoder-decoder-encoder paths with shared autoencoders (seeds/ede-shared-autoencoders.txt;
METHODS.md section 3).

Encoders E1, E2 and decoders D1, D2 make two paths that share E1 and E2: EDE1 = E1 -> D1 -> E2 and
EDE2 = E1 -> D2 -> E2.  Trained on normal tiles only, in the USAD manner: at epoch n — a pass over
the training tiles, counted from the samples drawn, not the engine's epochs — the reconstruction
phase weighs 1/n and the adversarial phase 1 - 1/n, in which EDE1 learns to tell real tiles from
EDE2's reconstructions (x1' = D1(E2(D2(E1(x))))) and EDE2 learns to fool it.

One joint update a step (the paper's Algorithm 1): both losses from one forward pass, each path's
parameters given its own loss's gradient, the shared encoders the sum of the two, one Adam step.
In the paper's unbounded game the adversarial terms of the shared encoders then cancel, and the
game is played by the decoders (D1 maximises x1''s error, D2 minimises it).  Stepping the paths one
after the other instead (USAD's code) hands the shared encoders two opposite-signed adversarial
updates in turn; measured on brickwork, that ranked defects in reverse (image AUROC 0.37).

The game is bounded (``margin``, as the energy-based GAN bounds its discriminator): EDE1 gains
from x1''s error only up to m.  Unbounded, EDE1 wins by decoding everything badly as the
reconstruction's weight 1/n shrinks, and EDE2 is pulled toward fooling it instead of toward
reconstructing x: on casting's validation split at 64 pixels, seed 0, every score of the unbounded
game ranked at or below chance (0.10–0.51); bounded at 0.02 (beta = 0 in both), the six scores
reached 0.75–0.92.  ``margin=None`` is the paper's unbounded game.  At 0.02 the chain's error stays above
the bound after the first passes, so EDE1 only reconstructs and EDE2 learns both to reconstruct
and to be reconstructed by EDE1.

The paper's score is A(x) = w1 ||z - z2||^2 + w2 ||z - z1'||^2 with w2 = 1 - w1 (``score_space=
"latent"``); ``score_w1`` may be changed after loading (the operator's sensitivity knob).
``score_space="image"`` takes the same weighted sum of the image errors, w1 ||x - x2||^2 + w2 ||x -
x1'||^2. The difference map combines |x - x2| and |x - x1'| with the score's weights, averaged over
channels; ``score_sigma`` scores its smoothed peak instead (``map_score``). The paper gives no
values for the loss weights alpha (image) and beta (latent). The defaults — the AE's 64-pixel input
and shape, beta = 0, margin 0.02, the image space with w1 = 0 (||x - x1'||^2, the error after both
paths) — were chosen on validation splits cut from train/ (``benchmarks/ede_score_space.py``, seed
0). Beta and the margin on casting's: with beta = 1 the best score reached 0.832 against 0.922, the
chosen one 0.512 against 0.859. The score as the best mean over all three sets' (casting 0.859,
brickwork 0.839, magnetic tile 0.550; the paper's A(x) at w1 = 0.5: 0.922, 0.568, 0.481). That error is
taken as the peak of its map smoothed by 2 pixels (``score_sigma``; ``benchmarks/map_score_validation.py``,
the same splits: 0.831 / 0.911 / 0.627 against the mean's 0.859 / 0.839 / 0.550, the best mean of
sigma 0, 1, 2, 4 and 8); ``score_sigma=None`` is the mean.

Ablation switches (the paper's Table 5): ``paths=1`` trains EDE1 alone on reconstruction
(score ||z - z1||^2, map |x - x1|); ``adversarial=False`` keeps both paths on reconstruction only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .base import Detector, Inference, TrainBatch, TrainingDefaults, register
from .blocks import Decoder, Encoder
from .map_score import check_sigma, tile_scores


def phase_weights(epoch: int) -> tuple[float, float]:
    """(1/n, 1 - 1/n) at epoch n (1-based): reconstruction first, the adversarial game later."""
    return 1.0 / epoch, 1.0 - 1.0 / epoch


@dataclass
class Passes:
    z: torch.Tensor
    x1: torch.Tensor
    x2: torch.Tensor
    z1: torch.Tensor
    z2: torch.Tensor
    x1p: torch.Tensor
    z1p: torch.Tensor


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).mean()


def ede_losses(x: torch.Tensor, p: Passes, epoch: int, alpha: float = 1.0, beta: float = 1.0,
               adversarial: bool = True, margin: float | None = None,
               mse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _mse) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_EDE1, L_EDE2) at epoch n:

    L_EDE1 = 1/n (a||x - x1||^2 + b||z - z1||^2) - (1 - 1/n)(a||x - x1'||^2 + b||z - z1'||^2)
    L_EDE2 = 1/n (a||x - x2||^2 + b||z - z2||^2) + (1 - 1/n)(a||x - x1'||^2 + b||z - z1'||^2)
    Without ``adversarial`` only the reconstruction terms, at full weight.  With a ``margin`` m,
    EDE1's gain is bounded as the energy-based GAN bounds its discriminator's: EDE1 maximises
    min(adv, m), so once EDE2's output, decoded by EDE1, is m from the real tile, EDE1 gains nothing
    by decoding it worse (the paper's unbounded game lets it win by decoding everything badly).
    ``mse`` is each term's mean squared error (EDE on features leaves a batch's padded cells out).
    """
    rec1 = alpha * mse(x, p.x1) + beta * mse(p.z, p.z1)
    rec2 = alpha * mse(x, p.x2) + beta * mse(p.z, p.z2)
    if not adversarial:
        return rec1, rec2
    first, second = phase_weights(epoch)
    adv = alpha * mse(x, p.x1p) + beta * mse(p.z, p.z1p)
    gain = adv if margin is None else adv.clamp(max=margin)
    return first * rec1 - second * gain, first * rec2 + second * adv


def joint_update(opt: torch.optim.Optimizer, losses: tuple[torch.Tensor, ...], paths: list[list[nn.Parameter]]) -> None:
    """The paper's Algorithm 1: each path's parameters get its own loss's gradient (the shared
    encoders the sum of both), then one step.  With one path, its loss alone."""
    opt.zero_grad(set_to_none=True)
    for i, (loss, params) in enumerate(zip(losses, paths, strict=False)):
        grads = torch.autograd.grad(loss, params, retain_graph=i + 1 < len(paths), allow_unused=True)
        for param, grad in zip(params, grads, strict=True):
            if grad is not None:
                param.grad = grad if param.grad is None else param.grad + grad
    opt.step()


@register
class EDE(Detector):
    method = "ede"
    has_difference_map = True
    defaults = TrainingDefaults(epochs=20, steps_per_epoch=50, batch_size=64, size=64)
    # Files written before the map's peak became the score were calibrated on the mean error.
    legacy_hparams = {"score_sigma": None}

    def __init__(self, *, size: int = 64, channels: int = 3, latent: int = 128, base_width: int = 16,
                 lr: float = 1e-3, alpha: float = 1.0, beta: float = 0.0, score_w1: float = 0.0, paths: int = 2,
                 adversarial: bool = True, score_space: str = "image", margin: float | None = 0.02,
                 score_sigma: float | None = 2.0) -> None:
        super().__init__(size=size, channels=channels)
        check_sigma(score_sigma)
        if score_sigma is not None and score_space != "image":
            raise ValueError("score_sigma scores the difference map, an image-space error: it needs score_space "
                             "'image' (set score_sigma=null for the latent score)")
        if paths not in (1, 2):
            raise ValueError(f"paths must be 1 or 2, got {paths}")
        if not 0.0 <= score_w1 <= 1.0:
            raise ValueError(f"score_w1 must be in [0, 1], got {score_w1}")
        if score_space not in ("latent", "image"):
            raise ValueError(f"score_space must be 'latent' or 'image', got {score_space!r}")
        if margin is not None and not margin > 0:
            raise ValueError(f"margin must be positive, got {margin}")
        self.score_space, self.margin, self.score_sigma = score_space, margin, score_sigma
        shape = {"size": size, "channels": channels, "latent": latent, "base_width": base_width}
        self.E1 = Encoder(**shape, final=nn.Tanh())
        self.E2 = Encoder(**shape, final=nn.Tanh())
        self.D1 = Decoder(**shape)
        self.D2 = Decoder(**shape) if paths == 2 else None
        self.lr, self.alpha, self.beta = lr, alpha, beta
        self.score_w1 = score_w1
        self.paths, self.adversarial = paths, adversarial and paths == 2

    def passes(self, x: torch.Tensor) -> Passes:
        z = self.E1(x)
        x1 = self.D1(z)
        z1 = self.E2(x1)
        if self.D2 is None:
            return Passes(z, x1, x1, z1, z1, x1, z1)
        x2 = self.D2(z)
        z2 = self.E2(x2)
        x1p = self.D1(z2)
        return Passes(z, x1, x2, z1, z2, x1p, self.E2(x1p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.passes(x).x2

    def _paths(self) -> list[list[nn.Parameter]]:
        """Each path's parameters: (E1, D1, E2) and, with two paths, (E1, D2, E2)."""
        paths = [[*self.E1.parameters(), *self.D1.parameters(), *self.E2.parameters()]]
        if self.D2 is not None:
            paths.append([*self.E1.parameters(), *self.D2.parameters(), *self.E2.parameters()])
        return paths

    def make_optimizers(self) -> None:
        self.optimizers = [torch.optim.Adam(self.parameters(), lr=self.lr)]

    def training_step(self, batch: TrainBatch, *, epoch: int, epochs: int) -> dict[str, float]:
        x = batch.normal
        losses = ede_losses(x, self.passes(x), batch.data_pass, self.alpha, self.beta, self.adversarial,
                            self.margin)
        paths = self._paths()
        joint_update(self.optimizers[0], losses, paths)
        return {f"loss{i + 1}": loss.item() for i, loss in enumerate(losses[: len(paths)])} | {
            "pass": float(batch.data_pass)}

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> Inference:
        p = self.passes(x)
        w1, w2 = (self.score_w1, 1.0 - self.score_w1) if self.D2 is not None else (1.0, 0.0)
        maps = (w1 * (x - p.x2).abs() + w2 * (x - p.x1p).abs()).mean(dim=1, keepdim=True)
        if self.score_space == "latent":
            scores = w1 * (p.z - p.z2).pow(2).flatten(1).mean(1) + w2 * (p.z - p.z1p).pow(2).flatten(1).mean(1)
        else:
            scores = tile_scores(w1 * (x - p.x2).pow(2) + w2 * (x - p.x1p).pow(2), maps, self.score_sigma)
        return Inference(scores=scores, maps=maps)
