"""EIDN — Enforced Isolation Deep Network (seeds/eidn.txt; METHODS.md section 1), on patch features.

The paper's embedding ``f`` maps a sample to a point in R^l (eq. 1 and 6; l = 2 so that the
embedding can be plotted).  The refined triplet loss (eq. 2) pulls normal samples to the origin and
anomalous ones to the one-vector, with anchors y in {0, 1} (eq. 3) and positives / negatives drawn
by the random triplet sampling of eq. 4-5.  Score = ||f(x)||_2, the distance from the origin.

Here a sample is a *patch*: ``f`` is a small head (1 x 1 convolutions) on the patch descriptors of a
frozen ImageNet backbone (``features.PatchFeatures``), so every 8 x 8 pixels of a frame get their own
point in the plane and the anomaly map is ||f|| per patch.  The paper's CNN saw whole images
shrunk to 32 x 32 pixels, where a blowhole or a hairline crack is one pixel or none.

What the head sees (``residual``, the default): beside each patch's descriptor x, how it differs
from good parts, as the residual r = x - (the nearest patch of a bank of good patches, a coreset as
in ``patchcore``) and its length ||r||, which is the memory bank's score.  A few labelled defects then
teach the head which departures from good matter, rather than what a defect looks like from
scratch.  While training, a good image (or a pseudo-anomaly painted on it) is compared with the bank
barred from that image's own patches, as an unseen good part is at inspection.  Measured on
validation splits cut from ``train/`` (5 % labels, seed 0, ``benchmarks/eidn_validation.py``, one
cell of smoothing): descriptor only / residual only / residual and ||r|| / all three: brickwork
0.943 / 0.905 / 0.928 / 0.944, magnetic tile 0.863 / 0.884 / 0.882 / 0.903, casting 0.940 / - / - /
0.944; and on test, three seeds, descriptor only / all three: brickwork 0.888 / 0.902, magnetic tile
0.835 / 0.856, casting 0.908 / 0.945.  It costs time: the nearest-bank search for every training
image (casting trains in 414-502 s a seed, against 191 s without it; magnetic tile 190-198 s
against 90 s) and for every patch inspected.

Where the embedding starts (``bank_prior``, the default, with ``residual``): at (d, d) for each
patch, d its distance to the bank in units of the training goods' mean worst distance, so that the
untrained model scores as the bank does and the head learns a correction f(x) (its last layer starts
at zero) rather than the whole score.  Without it the head scored below the bank it is given (one
reading: its hard negatives, each good image's worst patch pulled to the origin, teach it to
discount the distance).  Validation (as above): magnetic
tile 0.892 -> 0.909, brickwork 0.924 -> 0.944; test, three seeds: magnetic tile 0.856 -> 0.871
(pixel 0.858 -> 0.837), brickwork 0.902 -> 0.927, casting 0.945 -> 0.946.  Its limit: a patch far
beyond anything good (tens of units) starts far beyond (1, 1), where the loss pulls what it is shown
back, so the head learns to compress large distances; a saturating tanh prior avoided that on
hand-made data but measured lower on real parts (README).

What a step learns from (``image_weighted`` and ``labelled_share``, the defaults): a labelled defect
gave one anomalous instance (its bag's maximum), a pseudo-anomaly tens of painted cells, so triplets
drawn cell by cell took a labelled defect a few times in a hundred and the head learnt mostly what
the painting looks like.  Drawn with each anomalous image weighing alike, and with four in five of a
batch's anomalous images labelled where there are some, the real defects lead.  Validation (5 %
labels, seed 0, one cell of smoothing), cell by cell with half labelled / images alike with half /
with four in five / labelled only: brickwork 0.944 / 0.947 / 0.965 / 0.985, casting 0.942 / 0.986 /
0.985 / 0.994, magnetic tile 0.909 / 0.939 / 0.928 / 0.807 (its real defects alone teach too little
there; painted ones still help).  Test, three seeds, cell by cell -> images alike (a defect's one
worst cell): brickwork 0.927 -> 0.951, casting 0.946 -> 0.987, magnetic tile 0.871 -> 0.875; with its
three worst cells (the default) brickwork 0.967, casting 0.989, magnetic tile 0.871 (pixel 0.838 -> 0.859).

Model files from before the bank hold the descriptor-only head, and files from before the prior
the head without it: each keeps its behaviour (``legacy_hparams``); files from before the weighting
record the training settings they were made with.

Which patches are anomalous:

- pseudo-anomalies are painted with their masks: the cells mostly covered by the painting are
  anomalous instances;
- a labelled defect has only its image label, so it is a multiple-instance bag (the image is
  defective where at least one patch is): its ``bag_top`` most anomalous patches under the current
  ``f`` are its anomalous instances, weighing together as one image (a defect mostly spans a few
  cells; validation as below, its worst patch / its three worst: brickwork 0.965 / 0.965, casting
  0.985 / 0.989, magnetic tile 0.928 / 0.933, so three is the default).  A good image is a bag
  with no anomalous patch: its most anomalous patch is a normal instance (hard negatives), beside
  patches drawn at random.

EIDN needs anomalous samples: labelled defects where there are some, synthetic pseudo-anomalies
from the training engine otherwise (and alongside).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Inference, TrainBatch, TrainingDefaults, register
from .features import FeatureDetector, map_max
from .patchcore import MAX_PATCHES, coreset_of, nearest_rows, sample_patches_of


def triplet_loss(y: torch.Tensor, f_pos: torch.Tensor, f_neg: torch.Tensor,
                 alpha: float) -> torch.Tensor:
    """Eq. 2: sum_i max(0, ||y_i - f(xp_i)||^2 - ||y_i - f(xn_i)||^2 + alpha)."""
    d_pos = (y - f_pos).pow(2).sum(dim=1)
    d_neg = (y - f_neg).pow(2).sum(dim=1)
    return torch.clamp(d_pos - d_neg + alpha, min=0).sum()


def sample_triplets(normal: torch.Tensor, anomalous: torch.Tensor, m: int,
                    generator: torch.Generator | None = None, anomalous_weights: torch.Tensor | None = None):
    """Random triplet sampling (eq. 3-5): ``m`` triplets from normal (N, ...) and anomalous (A, ...) rows.

    For each i the anchor y_i is the zero or the one vector with equal odds; if y_i = 0 the
    positive is a normal sample and the negative an anomaly, else the other way round.  Rows are
    drawn with replacement, the anomalous ones uniformly or in proportion to ``anomalous_weights`` (A,).
    Returns ``(y_is_one, x_pos, x_neg)`` with ``y_is_one`` a bool vector.
    """
    device = normal.device
    y_is_one = torch.rand(m, generator=generator).lt(0.5).to(device)
    xn = normal[torch.randint(len(normal), (m,), generator=generator).to(device)]
    if anomalous_weights is None:
        rows = torch.randint(len(anomalous), (m,), generator=generator)
    else:
        rows = torch.multinomial(anomalous_weights.float().cpu(), m, replacement=True, generator=generator)
    xa = anomalous[rows.to(device)]
    sel = y_is_one.view(-1, *([1] * (normal.dim() - 1)))
    return y_is_one, torch.where(sel, xa, xn), torch.where(sel, xn, xa)


def _cells(x: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) -> (B, h * w, K)."""
    return x.flatten(2).transpose(1, 2)


def bag_maxima(emb: torch.Tensor, valid: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Each image's ``k`` most anomalous valid cells (the largest ||f||; fewer where an image of the
    batch has fewer valid cells): (B, l, h, w) -> (B * k, l)."""
    norms = emb.norm(dim=1).masked_fill(~valid[:, 0], -1.0).flatten(1)
    k = max(1, min(k, int(valid.flatten(1).sum(dim=1).min())))
    top = norms.topk(k, dim=1).indices
    return _cells(emb)[torch.arange(len(emb), device=emb.device)[:, None], top].flatten(0, 1)


def painted_cells(emb: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, share: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The cells of pseudo-anomalous images that their painting mostly covers: at least ``share`` of the
    image's best-covered cell (so a defect smaller than a cell still gives one): ((n, l), and how many
    of them each image gave (B,))."""
    cover = masks.masked_fill(~valid, 0.0).flatten(1)
    best = cover.amax(dim=1, keepdim=True)
    keep = (cover >= share * best) & (best > 0)
    return _cells(emb)[keep], keep.sum(dim=1)


class PatchEmbedding(nn.Module):
    """f: standardised patch descriptors (B, D, h, w) -> points in R^l per patch (B, l, h, w)."""

    def __init__(self, dim: int, embedding_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, hidden, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden, hidden // 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden // 2, embedding_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register
class EIDN(FeatureDetector):
    method = "eidn"
    uses_anomalies = True
    needs_anomalies = True
    # A step is 16 good and 16 anomalous images' patches and ``triplets`` triplets drawn from them.
    defaults = TrainingDefaults(epochs=20, steps_per_epoch=50, batch_size=16, size=None)
    # Per-patch embeddings are sharp: one cell of smoothing (validation, brickwork G = 0.05: 0.935 with
    # none, 0.931 with 1, 0.918 with the memory bank's 4) keeps a hairline crack from being averaged away.
    default_smoothing = 1.0
    # Files written before the bank hold a head on the descriptor alone; before the prior, one without it;
    # before the per-image weighting, a head trained with every painted cell drawn alike and half of the
    # anomalous images painted (training settings: they keep what the file records, not how it scores).
    legacy_hparams = {"residual": False, "bank_prior": False, "image_weighted": False, "labelled_share": 0.5,
                      "bag_top": 1}

    def __init__(self, *, size: int | None = None, channels: int = 3, backbone: str = "efficientnet_lite0",
                 stages: Sequence[int] | None = None, pool: int = 3, embedding_dim: int = 2,
                 alpha: float = 0.2, hidden: int = 128, lr: float = 1e-3, triplets: int = 512,
                 random_normals: int = 64, painted_share: float = 0.5, residual: bool = True,
                 max_bank: int = 2048, coreset_ratio: float = 0.1, bank_prior: bool = True,
                 image_weighted: bool = True, labelled_share: float = 0.8, bag_top: int = 3) -> None:
        super().__init__(size=size, channels=channels, backbone=backbone, stages=stages, pool=pool)
        if bank_prior and not residual:
            raise ValueError("bank_prior starts the embedding at the bank's distance: it needs residual=true "
                             "(with residual=false set bank_prior=false)")
        dim = 2 * self.feature_dim + 1 if residual else self.feature_dim
        self.f = PatchEmbedding(dim, embedding_dim, hidden)
        self.alpha, self.lr, self.triplets = alpha, lr, triplets
        self.random_normals, self.painted_share = random_normals, painted_share
        self.residual, self.max_bank, self.coreset_ratio = residual, max_bank, coreset_ratio
        if not 0.0 <= labelled_share <= 1.0:
            raise ValueError(f"labelled_share is a share of a batch's anomalous images, 0 to 1, got {labelled_share}")
        self.bank_prior, self.image_weighted, self.labelled_share = bank_prior, image_weighted, labelled_share
        if bag_top < 1:
            raise ValueError(f"bag_top is how many of a labelled defect's cells are its anomalous ones, at least 1, "
                             f"got {bag_top}")
        self.bag_top = bag_top
        if bank_prior:                           # f starts at zero: the embedding starts as the prior
            nn.init.zeros_(self.f.net[-1].weight)
            nn.init.zeros_(self.f.net[-1].bias)
        #: With ``bank_prior``: the training goods' mean worst distance to the bank, the prior's unit.
        self.register_buffer("prior_scale", torch.ones(()))
        #: Per channel of the head's input, the good training patches' mean and deviation.
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        #: With ``residual``: good patches (a coreset of the training goods'), and while training which
        #: good image each came from (not saved: only training compares an image with a bank built from it).
        self.register_buffer("bank", torch.zeros(0, self.feature_dim))
        self._bank_owner: torch.Tensor | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """The bank's size is what training chose: take it from the file (none in a legacy file, nor a
        prior's unit)."""
        stored = state_dict.get(prefix + "bank")
        if stored is not None:
            self.bank = torch.empty_like(stored, device=self.bank.device)
        else:
            state_dict[prefix + "bank"] = torch.zeros(0, self.feature_dim)
        state_dict.setdefault(prefix + "prior_scale", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def begin_training(self, normal: list[torch.Tensor]) -> list[torch.Tensor]:
        """With ``residual`` keep a coreset of the goods' patches as the bank, and compare each good image
        with the bank without its own patches (as an unseen good part is); then standardise the head's
        input with its per-channel mean and deviation over the goods.  Returns the goods in that form."""
        if self.residual:
            generator = torch.Generator().manual_seed(0)
            patches, owner = sample_patches_of(normal, MAX_PATCHES, generator=generator)
            chosen = coreset_of(patches, self.coreset_ratio, self.max_bank, generator=generator).to(patches.device)
            self.bank = patches[chosen].float().contiguous().to(self.feature_mean.device)
            self._bank_owner = owner.to(chosen.device)[chosen]
            normal = self.training_form(normal, list(range(len(normal))))
            worst = torch.stack([f[-1].max() for f in normal])       # each good's worst distance
            self.prior_scale = worst.mean().clamp_min(1e-6).to(self.prior_scale.device)
        cells = torch.cat([f.flatten(1) for f in normal], dim=1).float()
        self.feature_mean = cells.mean(dim=1).to(self.feature_mean.device)
        self.feature_std = cells.std(dim=1).clamp_min(1e-6).to(self.feature_std.device)
        return normal

    def training_form(self, maps: list[torch.Tensor], painted_on: list[int | None]) -> list[torch.Tensor]:
        """Descriptors (D, h, w) as the head's input (``_head_input``) for the training steps, each compared
        with the bank barred from the rows of the good image it is or was painted on (None: no good image)."""
        if not self.residual:
            return maps
        owner = self._bank_owner
        if owner is None:
            raise RuntimeError("call begin_training with the good images first")
        out = []
        for features, source in zip(maps, painted_on, strict=True):
            barred = None if source is None else owner == source
            if barred is not None and bool(barred.all()):
                barred = None                    # a bank from one image: nothing else to compare with
            out.append(self._head_input(features[None].to(self.bank.device), barred)[0].to(features.device))
        return out

    def _head_input(self, features: torch.Tensor, barred: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D, h, w) -> (B, 2D + 1, h, w): each cell's descriptor x, its residual r = x - its nearest bank
        row, and ||r|| (the memory bank's score)."""
        if len(self.bank) == 0:
            raise RuntimeError("the bank of good patches is empty: train the detector first")
        b, d, h, w = features.shape
        queries = features.permute(0, 2, 3, 1).reshape(-1, d)
        r = queries - self.bank[nearest_rows(queries, self.bank, barred=barred)].to(features.dtype)
        return torch.cat([queries, r, r.norm(dim=1, keepdim=True)], 1).view(b, h, w, -1).permute(0, 3, 1, 2)

    def _embed_prepared(self, features: torch.Tensor) -> torch.Tensor:
        """The head's input (B, dim, h, w) -> the embedding; with ``bank_prior`` f(x) + (p, p), where
        p = d / prior_scale for the bank's distance d (the input's last channel)."""
        z = (features - self.feature_mean.view(1, -1, 1, 1)) / self.feature_std.view(1, -1, 1, 1)
        if self.bank_prior:
            return self.f(z) + features[:, -1:] / self.prior_scale
        return self.f(z)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Patch descriptors (B, D, h, w) -> points in the plane (B, l, h, w)."""
        return self._embed_prepared(self._head_input(features) if self.residual else features)

    def make_optimizers(self) -> None:
        self.optimizers = [torch.optim.Adam(self.f.parameters(), lr=self.lr)]

    def _normal_instances(self, batch: TrainBatch, emb: torch.Tensor) -> torch.Tensor:
        """Each good image's worst patch (its bag's maximum) and ``random_normals`` patches at random."""
        valid = batch.normal_valid if batch.normal_valid is not None else torch.ones_like(emb[:, :1], dtype=torch.bool)
        cells = _cells(emb)[valid.flatten(1)]
        pick = torch.randint(len(cells), (min(len(cells), self.random_normals * len(emb)),), device=emb.device)
        return torch.cat([bag_maxima(emb, valid), cells[pick]])

    def _anomalous_instances(self, batch: TrainBatch, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Painted cells of the pseudo-anomalies, and each labelled defect's ``bag_top`` worst patches; with
        ``image_weighted`` also each instance's weight in the triplet draw (1 / its image's instances)."""
        valid = (batch.anomalous_valid if batch.anomalous_valid is not None
                 else torch.ones_like(emb[:, :1], dtype=torch.bool))
        real = (batch.anomalous_is_real if batch.anomalous_is_real is not None
                else torch.zeros(len(emb), dtype=torch.bool, device=emb.device))
        parts, weights = [], []
        if real.any():
            bags = bag_maxima(emb[real], valid[real], self.bag_top)
            parts.append(bags)
            weights.append(torch.full((len(bags),), int(real.sum()) / len(bags), device=emb.device))
        if (~real).any():
            if batch.anomalous_masks is None:
                raise ValueError("EIDN learns from pseudo-anomalies' masks: the batch has none")
            cells, counts = painted_cells(emb[~real], batch.anomalous_masks[~real], valid[~real], self.painted_share)
            parts.append(cells)
            weights.append(torch.repeat_interleave(1.0 / counts.clamp_min(1), counts))
        return torch.cat(parts), torch.cat(weights) if self.image_weighted else None

    def training_step(self, batch: TrainBatch, *, epoch: int, epochs: int) -> dict[str, float]:
        if batch.anomalous is None or len(batch.anomalous) == 0:
            raise ValueError("EIDN trains on triplets and needs anomalous samples in every batch")
        (opt,) = self.optimizers
        normal = self._normal_instances(batch, self._embed_prepared(batch.normal))
        anomalous, weights = self._anomalous_instances(batch, self._embed_prepared(batch.anomalous))
        if len(anomalous) == 0:
            return {"loss": 0.0}
        y_is_one, f_pos, f_neg = sample_triplets(normal, anomalous, self.triplets, anomalous_weights=weights)
        y = y_is_one.to(f_pos.dtype).view(-1, 1).expand_as(f_pos)
        loss = triplet_loss(y, f_pos, f_neg, self.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item() / self.triplets}

    def score_features(self, features: torch.Tensor) -> Inference:
        emb = self.embed(features)
        maps = emb.norm(dim=1, keepdim=True)
        return Inference(scores=map_max(maps), maps=maps, embeddings=emb)

