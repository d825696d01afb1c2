"""PatchCore — a memory bank of good patches, scored by the distance to the nearest one.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.

Fitting keeps a coreset of the good training images' patch descriptors: greedy k-centre selection
(each next patch is the one farthest from all kept so far), run on a random projection of the
descriptors as the paper does, so that a few percent of the patches cover what the whole set
covers.  A patch's score is its Euclidean distance to the nearest patch of the bank; an image's
score is its worst patch's.  The search runs in torch on the model's device; on the CPU the
pipeline hands it to faiss (``inspector.detect.search``), measured faster there.  No labels and
no gradient steps: the reference when an operator has no labelled defects, and Inspector's
default detector.

With ``balance_stages`` each backbone stage's block of the descriptor is first scaled to the same
RMS norm over the training patches (``stage_weights``), so that the deep stage's many channels do
not drown the shallow one's fine detail in the distance.  Measured on validation splits cut from
``train/`` (stages 3 + 6, seed 0, ``benchmarks/patchcore_validation.py --balance``) it suits fine
texture and not shapes: brickwork 0.958 -> 0.984 unsmoothed, 0.927 -> 0.947 at 4 cells; magnetic
tile 0.878 -> 0.871 and casting 0.939 -> 0.914 at 4 cells.  So it is an option, off by default.
(Choosing it per part without labels, on pseudo-anomalies painted on held-out goods, was tried: it
picked brickwork's best but on magnetic tile a setting 0.04 below its best, so it was not kept.)

With ``whiten`` (the default) the descriptors are first whitened by the training patches' covariance
(shrunk toward its mean variance, ``whitening``), so the nearest-patch distance is a Mahalanobis
distance: a direction that good parts hardly vary along counts as much as one they vary along a lot.
Measured on validation splits cut from ``train/`` (stages 3 + 6, 300 goods, a 2048 bank, split
seeds 0 / 1; unsmoothed / 4 cells): casting 0.920 / 0.929 -> 0.955 / 0.950 and 0.945 / 0.941 ->
0.955 / 0.946, brickwork 0.943 / 0.926 -> 0.947 / 0.933, magnetic tile 0.865 / 0.886 -> 0.859 /
0.883 and 0.863 / 0.882 -> 0.860 / 0.885; the shrinkage (0.01 to 0.6) moved casting by under 0.005.
On the test sets (three seeds) it scored casting 0.965 -> 0.976, magnetic tile 0.934 -> 0.928 (pixel
0.842 -> 0.869) and brickwork (parts) 0.902 -> 0.906.  Whitening undoes any per-channel scaling
before it, so ``balance_stages`` (the texture surface) goes without it.  Files from before it was the
default load unwhitened (``legacy_hparams``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .base import Inference, TrainingDefaults, register
from .features import FeatureDetector, map_max

#: Queries scored against the bank at once (bounds the distance matrix: 4096 x bank floats).
_QUERY_CHUNK = 4096
#: Patches sampled from the training goods before the coreset is chosen.  On casting's validation
#: split (stages 3 + 6, a 2048 bank) 200 000 scored 0.939 against 0.923 from 50 000; the coreset
#: then takes about 30 s on 2 CPU cores.
MAX_PATCHES = 200_000
#: Training patches the whitening's covariance is estimated from.
_COVARIANCE_PATCHES = 50_000


def sample_patches(normal: list[torch.Tensor], n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """At most ``n`` patch descriptors (n, D) drawn uniformly from the maps (D, h, w) of ``normal``,
    without first gathering every patch of every image in one tensor (gigabytes for a large set)."""
    return sample_patches_of(normal, n, generator=generator)[0]


def sample_patches_of(normal: list[torch.Tensor], n: int, *, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``sample_patches`` and, for each patch drawn, the index of the image it came from: ((n, D), (n,))."""
    counts = torch.tensor([f[0].numel() for f in normal])
    total = int(counts.sum())
    if total <= n:
        return (torch.cat([f.flatten(1).T for f in normal]),
                torch.repeat_interleave(torch.arange(len(normal)), counts))
    keep = torch.randperm(total, generator=generator)[:n].sort().values
    owner = torch.bucketize(keep, counts.cumsum(0), right=True)
    starts = counts.cumsum(0) - counts
    rows = [normal[i].flatten(1)[:, (keep[owner == i] - starts[i]).to(normal[i].device)].T
            for i in owner.unique().tolist()]
    return torch.cat(rows), owner


def draw_cells(features: torch.Tensor, share: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform random ``share`` of the cells of one image's descriptors (D, h, w), as (D, 1, k): what
    ``sample_patches`` would take from it, drawn before the next image's descriptors are computed, so
    that a large pool of images never sits in memory whole."""
    cells = features.flatten(1)
    k = min(cells.shape[1], max(1, round(share * cells.shape[1])))
    keep = torch.randperm(cells.shape[1], generator=generator)[:k].to(cells.device)
    return cells[:, keep][:, None]


def stage_weights(patches: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
    """Per descriptor channel, 1 / the RMS norm of its stage's block over ``patches`` (N, D)."""
    weights, start = [], 0
    for c in channels:
        rms = patches[:, start:start + c].float().pow(2).sum(1).mean().sqrt()
        weights.append(torch.full((c,), 1.0 / max(float(rms), 1e-12), device=patches.device))
        start += c
    return torch.cat(weights)


def whitening(patches: torch.Tensor, shrink: float = 0.1, *, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean m (D,) and a matrix L (D, D) of patches (N, D) such that ||(x - m) L|| is x's Mahalanobis
    distance from m under their covariance, shrunk by ``shrink`` toward its mean variance (so a direction
    good parts never vary along does not divide by zero)."""
    if len(patches) > _COVARIANCE_PATCHES:
        patches = patches[torch.randperm(len(patches), generator=generator)[:_COVARIANCE_PATCHES].to(patches.device)]
    x = patches.double()
    mean = x.mean(0)
    cov = torch.cov(x.T).reshape(x.shape[1], x.shape[1])
    eye = torch.eye(len(cov), dtype=x.dtype, device=x.device)
    cov = (1.0 - shrink) * cov + shrink * cov.diagonal().mean().clamp_min(1e-12) * eye
    return mean.float(), torch.linalg.cholesky(torch.linalg.inv(cov)).float()


def greedy_coreset(x: torch.Tensor, m: int, *, projection: int = 128,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of ``m`` rows of ``x`` (N, D) chosen by greedy k-centre selection on a random projection."""
    n = len(x)
    if m >= n:
        return torch.arange(n, device=x.device)
    z = x.float()
    if projection and projection < x.shape[1]:
        matrix = torch.randn(x.shape[1], projection, generator=generator, device="cpu").to(x.device)
        z = z @ (matrix / math.sqrt(projection))
    z = z.contiguous()
    sq = z.pow(2).sum(1)
    start = int(torch.randint(n, (1,), generator=generator).item())
    chosen = torch.empty(m, dtype=torch.long, device=x.device)
    chosen[0] = start
    # ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2: one matrix-vector product a step, no (N, D) temporaries.
    nearest = sq - 2.0 * (z @ z[start]) + sq[start]
    for i in range(1, m):
        far = int(torch.argmax(nearest))
        chosen[i] = far
        torch.minimum(nearest, sq - 2.0 * (z @ z[far]) + sq[far], out=nearest)
    return chosen


def coreset_of(patches: torch.Tensor, ratio: float, max_bank: int, *, projection: int = 128,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of a bank's rows among ``patches`` (N, D): a greedy coreset of ``ratio`` of them, at most
    ``max_bank``."""
    m = min(max_bank, max(1, round(ratio * len(patches))))
    return greedy_coreset(patches, m, projection=projection, generator=generator)


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from each query (N, D) to its nearest bank row (M, D): (N,).

    In chunks of queries, which bound the distance matrix; an ONNX export takes one product (a
    traced loop would keep the trace's chunk count for every input size).
    """
    bank_sq = bank.pow(2).sum(1)
    if torch.onnx.is_in_onnx_export():
        q = queries.float()
        d2 = q.pow(2).sum(1, keepdim=True) - 2.0 * (q @ bank.T) + bank_sq
        return d2.amin(dim=1).clamp_min(0.0).sqrt()
    out = torch.empty(len(queries), device=queries.device)
    for start in range(0, len(queries), _QUERY_CHUNK):
        q = queries[start:start + _QUERY_CHUNK].float()
        d2 = q.pow(2).sum(1, keepdim=True) - 2.0 * (q @ bank.T) + bank_sq
        out[start:start + _QUERY_CHUNK] = d2.amin(dim=1).clamp_min(0.0).sqrt()
    return out


def nearest_rows(queries: torch.Tensor, bank: torch.Tensor, *, barred: torch.Tensor | None = None) -> torch.Tensor:
    """The index of each query's (N, D) nearest bank row (M, D): (N,).  ``barred`` (M,) bool marks rows
    these queries may not match (the rows taken from the queries' own image, when a training image is
    compared with a bank built from it).  Chunked as ``nearest_distance`` is."""
    bank_sq = bank.pow(2).sum(1)
    if barred is not None:
        bank_sq = bank_sq.masked_fill(barred.to(bank.device), float("inf"))
    if torch.onnx.is_in_onnx_export():
        return (bank_sq - 2.0 * (queries.float() @ bank.T)).argmin(dim=1)
    out = torch.empty(len(queries), dtype=torch.long, device=queries.device)
    for start in range(0, len(queries), _QUERY_CHUNK):
        q = queries[start:start + _QUERY_CHUNK].float()
        out[start:start + _QUERY_CHUNK] = (bank_sq - 2.0 * (q @ bank.T)).argmin(dim=1)
    return out


@register
class PatchCore(FeatureDetector):
    method = "patchcore"
    gradient_free = True
    defaults = TrainingDefaults(epochs=1, steps_per_epoch=1, batch_size=1, size=None)
    #: The image's score is the maximum of the map smoothed by 12 cells (the heat map shown stays at one
    #: cell).  Chosen on the validation splits (4 / 8 / 12 cells: casting 0.976 / 0.988 / 0.994, magnetic
    #: tile 0.906 / 0.916 / 0.922, brickwork 0.929 / 0.936 / 0.943); on test (three seeds) casting 0.976 ->
    #: 0.996, with recall at the 1 % threshold 0.66 -> 0.93 (README, "The default detector").  A wide
    #: smoothing weighs a defect by its extent, so the demo's small defects keep 4 (tools/make_demo_model.py).
    default_smoothing = 12.0
    #: Files written before whitening was the default hold an unwhitened bank.
    legacy_hparams = {"whiten": False}

    def __init__(self, *, size: int | None = None, channels: int = 3, backbone: str = "efficientnet_lite0",
                 stages: Sequence[int] | None = None, pool: int = 3, coreset_ratio: float = 0.1,
                 max_bank: int = 2048, max_patches: int = MAX_PATCHES, projection: int = 128,
                 balance_stages: bool = False, whiten: bool = True) -> None:
        super().__init__(size=size, channels=channels, backbone=backbone, stages=stages, pool=pool)
        if not 0.0 < coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        self.coreset_ratio, self.max_bank, self.max_patches = coreset_ratio, max_bank, max_patches
        self.projection, self.balance_stages, self.whiten = projection, balance_stages, whiten
        self.register_buffer("bank", torch.zeros(0, self.feature_dim))
        #: Per descriptor channel, the weight of its stage (``stage_weights``); ones until fitted.
        self.register_buffer("channel_weights", torch.ones(self.feature_dim))
        #: With ``whiten``, the training patches' mean and whitening matrix (``whitening``), applied
        #: after the channel weights; zero and the identity (no change) otherwise.
        self.register_buffer("whiten_mean", torch.zeros(self.feature_dim))
        self.register_buffer("whiten_matrix", torch.eye(self.feature_dim))
        #: A faster nearest-neighbour search of ``bank`` for CPU queries, set from outside (the
        #: inspection pipeline sets faiss's; models/ stays torch only): queries (N, D) -> distances (N,).
        self.cpu_search: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """The bank's size is what fitting chose: take it from the file."""
        stored = state_dict.get(prefix + "bank")
        if stored is not None:
            self.bank = torch.empty_like(stored, device=self.bank.device)
            # A file from before the stages were balanced: its bank is in unweighted units.
            state_dict.setdefault(prefix + "channel_weights", torch.ones(stored.shape[1], dtype=stored.dtype))
            # ... and from before whitening: its bank is not whitened.
            state_dict.setdefault(prefix + "whiten_mean", torch.zeros(stored.shape[1], dtype=stored.dtype))
            state_dict.setdefault(prefix + "whiten_matrix", torch.eye(stored.shape[1], dtype=stored.dtype))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fit_features(self, normal: list[torch.Tensor], *, generator: torch.Generator | None = None) -> dict:
        patches = sample_patches(normal, self.max_patches, generator=generator)
        seen = sum(f[0].numel() for f in normal)
        self.channel_weights = (stage_weights(patches, self.patch_features.backbone.out_channels)
                                if self.balance_stages else torch.ones(patches.shape[1])).to(patches.device)
        patches = patches * self.channel_weights
        if self.whiten:
            self.whiten_mean, self.whiten_matrix = whitening(patches, generator=generator)
            patches = (patches - self.whiten_mean) @ self.whiten_matrix
        else:
            self.whiten_mean = torch.zeros(patches.shape[1], device=patches.device)
            self.whiten_matrix = torch.eye(patches.shape[1], device=patches.device)
        chosen = coreset_of(patches, self.coreset_ratio, self.max_bank, projection=self.projection,
                            generator=generator)
        self.bank = patches[chosen].float().contiguous()
        self.cpu_search = None              # it searched the old bank
        return {"patches": seen, "pool": len(patches), "bank": len(chosen)}

    def score_features(self, features: torch.Tensor) -> Inference:
        if len(self.bank) == 0:
            raise RuntimeError("the memory bank is empty: fit the detector first")
        b, d, h, w = features.shape
        queries = features.permute(0, 2, 3, 1).reshape(-1, d) * self.channel_weights.to(features.dtype)
        if self.whiten:
            queries = (queries - self.whiten_mean.to(queries.dtype)) @ self.whiten_matrix.to(queries.dtype)
        cpu = self.cpu_search is not None and queries.device.type == "cpu" and queries.dtype == torch.float32
        maps = (self.cpu_search(queries) if cpu else nearest_distance(queries, self.bank)).view(b, 1, h, w)
        return Inference(scores=map_max(maps), maps=maps)
