"""Losses, shapes and the interface of every registered detector."""

import math

import pytest
import torch

import models
from models import TrainBatch
from models.eidn import sample_triplets, triplet_loss


def test_registry_lists_methods_and_rejects_unknown():
    assert {"ae", "agad", "ede", "eidn"} <= set(models.method_names())
    with pytest.raises(models.UnknownMethodError, match="available methods: .*eidn"):
        models.get_method("nope")


def test_triplet_loss_values_on_hand_made_tensors():
    y = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # Row 0: positive at the anchor, negative far: max(0, 0 - 2 + 0.2) = 0.
    # Row 1: positive 1 away (squared 1), negative at the anchor: max(0, 1 - 0 + 0.2) = 1.2.
    f_pos = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    f_neg = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    loss = triplet_loss(y, f_pos, f_neg, alpha=0.2)
    assert loss.item() == pytest.approx(1.2)


def test_triplet_loss_sign_pulls_positive_to_anchor_and_pushes_negative_away():
    y = torch.zeros(1, 2)
    f_pos = torch.tensor([[0.5, 0.0]], requires_grad=True)
    f_neg = torch.tensor([[0.3, 0.0]], requires_grad=True)
    triplet_loss(y, f_pos, f_neg, alpha=0.2).backward()
    assert f_pos.grad[0, 0] > 0   # gradient descent moves f_pos toward 0
    assert f_neg.grad[0, 0] < 0   # ... and f_neg away from 0


def test_triplet_sampling_follows_eq_4_and_5():
    normal = torch.zeros(40, 2)
    anomalous = torch.ones(7, 2)
    y_is_one, x_pos, x_neg = sample_triplets(normal, anomalous, 512)
    assert len(y_is_one) == 512
    assert torch.equal(x_pos[:, 0] == 1, y_is_one)
    assert torch.equal(x_neg[:, 0] == 1, ~y_is_one)
    assert 0.4 < y_is_one.float().mean() < 0.6   # anchors 0 and 1 with equal odds


def test_triplet_sampling_draws_anomalies_in_proportion_to_their_weights():
    normal = torch.zeros(40, 2)
    anomalous = torch.cat([torch.ones(1, 2), torch.full((99, 2), 2.0)])     # one row against 99
    weights = torch.cat([torch.ones(1), torch.full((99,), 1 / 99)])          # ... weighing as much as them
    generator = torch.Generator().manual_seed(0)
    y_is_one, x_pos, x_neg = sample_triplets(normal, anomalous, 4000, generator, anomalous_weights=weights)
    drawn = torch.where(y_is_one[:, None], x_pos, x_neg)[:, 0]
    assert 0.45 < (drawn == 1).float().mean() < 0.55
    _, x_pos, x_neg = sample_triplets(normal, anomalous, 4000, generator)     # uniform: about 1 in 100
    assert (torch.cat([x_pos, x_neg])[:, 0] == 1).float().mean() < 0.03


@pytest.mark.parametrize("method", ["ae", "agad", "ede"])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_at_default_size(method, channels):
    cls = models.get_method(method)
    det = cls(channels=channels)
    s = cls.defaults.size
    assert det.size == s
    out = det.infer(torch.rand(5, channels, s, s) * 2 - 1)
    assert out.scores.shape == (5,)
    if det.has_difference_map:
        assert out.maps.shape == (5, 1, s, s)
        assert (out.maps >= 0).all()
    else:
        assert out.maps is None


def test_ae_reconstruction_error_is_the_score():
    det = models.create("ae", size=32, channels=1)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    out = det.infer(x)
    recon = det(x)
    assert torch.allclose(out.scores, (x - recon).pow(2).mean(dim=(1, 2, 3)), atol=1e-6)
    assert torch.allclose(out.maps, (x - recon).abs().mean(dim=1, keepdim=True), atol=1e-6)


def test_ae_training_steps_lower_the_loss():
    torch.manual_seed(0)
    det = models.create("ae", size=16, channels=1)
    det.make_optimizers()
    batch = TrainBatch(torch.rand(32, 1, 16, 16) * 0.2 - 0.8)
    first = det.training_step(batch, epoch=1, epochs=1)["loss"]
    for _ in range(30):
        last = det.training_step(batch, epoch=1, epochs=1)["loss"]
    assert last < first


def _eidn_on_toy_features():
    """An EIDN whose head sees hand-made descriptors: normal cells near 0, a square at 3 in every channel.

    Without the bank prior: these cells lie 20 times the goods' worst distance from the bank, the prior
    starts them that far out, and the loss pulls them back to (1, 1), among the untrained cells of their
    images (a known limit of the prior: see the README).  These tests are of the instances chosen."""
    torch.manual_seed(1)                        # the head's initialisation, whatever ran before
    det = models.create("eidn", stages=(2,), pool=1, hidden=32, bank_prior=False)
    d = det.feature_dim
    torch.manual_seed(0)
    normal = torch.randn(8, d, 6, 6) * 0.3
    anomalous = torch.randn(8, d, 6, 6) * 0.3
    anomalous[:, :, 2:4, 2:4] += 3.0
    masks = torch.zeros(8, 1, 6, 6)
    masks[:, :, 2:4, 2:4] = 1.0
    return det, normal, anomalous, masks


def test_eidn_learns_per_patch_from_pseudo_anomaly_masks():
    det, normal, anomalous, masks = _eidn_on_toy_features()
    goods = torch.stack(det.begin_training(list(normal)))
    painted = torch.stack(det.training_form(list(anomalous), list(range(8))))     # as if painted on each good
    det.make_optimizers()
    batch = TrainBatch(goods, painted, torch.zeros(8, dtype=torch.bool), masks)
    for _ in range(80):
        det.training_step(batch, epoch=1, epochs=1)
    with torch.no_grad():
        out = det.score_features(anomalous)
    assert out.embeddings.shape == (8, 2, 6, 6) and out.maps.shape == (8, 1, 6, 6)
    assert torch.allclose(out.maps[:, 0], out.embeddings.norm(dim=1))
    painted, rest = out.maps[:, 0, 2:4, 2:4], out.maps[:, 0].clone()
    rest[:, 2:4, 2:4] = 0
    assert painted.min() > rest.max()                   # the painted cells, not their images, are anomalous
    toward = out.embeddings[:, :, 2, 2]
    assert ((toward - 1).norm(dim=1) < toward.norm(dim=1)).all()     # nearer (1, 1) than the origin


def test_eidn_finds_the_defect_in_a_labelled_image_as_a_multiple_instance_bag():
    det, normal, anomalous, _ = _eidn_on_toy_features()
    goods = torch.stack(det.begin_training(list(normal)))
    labelled = torch.stack(det.training_form(list(anomalous), [None] * 8))
    det.make_optimizers()
    # image labels only (no mask): the defect is wherever the bag's most anomalous patch is
    batch = TrainBatch(goods, labelled, torch.ones(8, dtype=torch.bool), torch.zeros(8, 1, 6, 6))
    for _ in range(150):
        det.training_step(batch, epoch=1, epochs=1)
    with torch.no_grad():
        maps = det.score_features(anomalous).maps[:, 0]
        good = det.score_features(normal).maps[:, 0]
    hottest = maps.flatten(1).argmax(1)
    assert all(int(i) // 6 in (2, 3) and int(i) % 6 in (2, 3) for i in hottest)
    assert maps.flatten(1).amax(1).min() > good.flatten(1).amax(1).max()


def test_eidn_compares_a_training_good_with_the_bank_without_its_own_patches():
    det = models.create("eidn", stages=(2,), pool=1, hidden=32, residual=True, coreset_ratio=1.0, max_bank=10_000)
    d = det.feature_dim
    normal = list(torch.randn(4, d, 3, 3, generator=torch.Generator().manual_seed(0)))
    goods = det.begin_training(normal)             # every patch is in the bank
    assert len(det.bank) == 4 * 9 and goods[0].shape == (2 * d + 1, 3, 3)
    others = torch.cat([f.flatten(1).T for f in normal[1:]])
    x = normal[0].flatten(1).T
    expected = torch.cdist(x, others).amin(dim=1)            # image 0 against images 1-3 only
    torch.testing.assert_close(goods[0][-1].flatten(), expected)
    torch.testing.assert_close(goods[0][:d].flatten(1).T, x)  # the descriptor itself comes first
    # a pseudo-anomaly painted on image 0 is barred from image 0 as well; a labelled defect from nothing
    painted, labelled = det.training_form([normal[0], normal[0]], [0, None])
    torch.testing.assert_close(painted, goods[0])
    assert labelled[-1].abs().max() < 1e-4                   # its own patches are in the bank
    # inspecting: nothing barred, the bank's score is the distance to the nearest good patch
    with torch.no_grad():
        inspected = det._head_input(normal[1][None])[0]
    assert inspected[-1].abs().max() < 1e-4


def test_eidn_with_the_bank_prior_starts_as_the_memory_bank():
    det = models.create("eidn", stages=(2,), pool=1, hidden=32, coreset_ratio=1.0, max_bank=10_000)
    d = det.feature_dim
    normal = list(torch.randn(4, d, 3, 3, generator=torch.Generator().manual_seed(0)))
    goods = det.begin_training(normal)
    worst = torch.stack([g[-1].max() for g in goods]).mean()       # the goods' mean worst distance
    torch.testing.assert_close(det.prior_scale, worst)
    query = torch.randn(2, d, 3, 3, generator=torch.Generator().manual_seed(1))
    bank_distance = torch.cdist(query.flatten(2).transpose(1, 2), torch.cat([f.flatten(1).T for f in normal])).amin(2)
    with torch.no_grad():
        out = det.score_features(query)
    # before any step f is zero: each patch sits at (d, d) / scale, its score the bank's distance
    torch.testing.assert_close(out.maps.flatten(1), 2 ** 0.5 * bank_distance / worst)
    torch.testing.assert_close(out.embeddings[:, 0], out.embeddings[:, 1])
    with pytest.raises(ValueError, match="needs residual"):
        models.create("eidn", stages=(2,), pool=1, residual=False, bank_prior=True)


def test_eidn_on_descriptors_alone_keeps_no_bank():
    det = models.create("eidn", stages=(2,), pool=1, hidden=32, residual=False, bank_prior=False)
    normal = list(torch.randn(2, det.feature_dim, 3, 3))
    assert det.begin_training(normal) is normal and len(det.bank) == 0
    assert det.training_form(normal, [0, 1]) is normal


def test_eidn_weighs_each_anomalous_image_alike_when_image_weighted():
    _, normal, anomalous, masks = _eidn_on_toy_features()
    det = models.create("eidn", stages=(2,), pool=1, hidden=32, bank_prior=False, residual=False,
                        image_weighted=True)
    masks = masks.clone()
    masks[4:] = 0.0
    masks[4:, :, 0, 0] = 1.0                    # images 4-7 painted on one cell, 0-3 on four
    real = torch.zeros(8, dtype=torch.bool)
    real[:2] = True                             # images 0 and 1 labelled: their bags' bag_top (3) worst cells
    batch = TrainBatch(normal, anomalous, real, masks)
    instances, weights = det._anomalous_instances(batch, det.embed(anomalous))
    assert len(instances) == 2 * 3 + 2 * 4 + 4 * 1
    torch.testing.assert_close(weights, torch.tensor([1 / 3] * 6 + [0.25] * 8 + [1.0] * 4))


def test_eidn_ignores_padded_cells_of_a_batch():
    det, normal, anomalous, masks = _eidn_on_toy_features()
    valid = torch.ones(8, 1, 6, 6, dtype=torch.bool)
    valid[:, :, :, 4:] = False                  # these images are 4 cells wide: the rest is padding
    emb = torch.zeros(8, 2, 6, 6)
    emb[:, :, :, 5] = 9.0                       # a "hot" padded cell must never be a bag's maximum
    emb[:, :, 1, 1] = 1.0
    emb[:, :, 3, 2] = 0.5
    from models.eidn import bag_maxima
    assert torch.equal(bag_maxima(emb, valid), torch.ones(8, 2))
    top = bag_maxima(emb, valid, k=2).view(8, 2, 2)            # each image's two worst valid cells, worst first
    assert torch.equal(top[:, 0], torch.ones(8, 2)) and torch.equal(top[:, 1], torch.full((8, 2), 0.5))
    valid[0] = False
    valid[0, :, 1, 1] = valid[0, :, 3, 2] = True    # image 0 has two valid cells: no padded cell makes up three
    top = bag_maxima(emb, valid, k=3)
    assert len(top) == 8 * 2 and (top < 9.0).all()


def test_eidn_refuses_batches_without_anomalies():
    det = models.create("eidn", stages=(2,), pool=1)
    det.make_optimizers()
    with pytest.raises(ValueError, match="anomalous"):
        det.training_step(TrainBatch(torch.zeros(4, det.feature_dim, 3, 3)), epoch=1, epochs=1)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError):
        models.create("ae", size=50)
    with pytest.raises(ValueError):
        models.create("ae", channels=2)


def test_agad_on_features_reconstructs_normal_cells_better_than_odd_ones():
    torch.manual_seed(0)
    det = models.create("agad_features", stages=(2,), pool=1, hidden=32, latent=8)
    d = det.feature_dim
    basis = torch.randn(4, d)                                  # normal cells lie near a 4-d subspace
    normal = torch.einsum("kd,bkhw->bdhw", basis, torch.randn(8, 4, 6, 6))
    det.begin_training(list(normal))
    det.make_optimizers()
    for _ in range(150):
        det.training_step(TrainBatch(normal), epoch=1, epochs=1)
    det.eval()
    odd = normal.clone()
    odd[:, :, 2, 3] = torch.randn(8, d) * normal.std() * 3     # one cell off the subspace
    with torch.no_grad():
        maps = det.score_features(odd).maps[:, 0]
    assert (maps.flatten(1).argmax(1) == 2 * 6 + 3).float().mean() >= 0.75


def test_ede_on_features_scores_an_odd_cell_highest_and_ignores_padding():
    torch.manual_seed(0)
    det = models.create("ede_features", stages=(2,), pool=1, hidden=32, latent=8)
    d = det.feature_dim
    basis = torch.randn(4, d)                                  # normal cells lie near a 4-d subspace
    normal = torch.einsum("kd,bkhw->bdhw", basis, torch.randn(8, 4, 5, 7))     # odd sides: padded inside
    det.begin_training(list(normal))
    det.make_optimizers()
    valid = torch.ones(8, 1, 5, 7)
    valid[:, :, :, 6] = 0                                      # a padded column, filled with garbage
    padded = normal.clone()
    padded[:, :, :, 6] = 1e3
    for step in range(150):
        stats = det.training_step(TrainBatch(padded, normal_valid=valid, data_pass=1 + step // 20), epoch=1, epochs=1)
    assert all(map(math.isfinite, stats.values())) and stats["loss2"] < 10
    det.eval()
    odd = normal.clone()
    odd[:, :, 2, 3] = torch.randn(8, d) * normal.std() * 3     # one cell off the subspace
    with torch.no_grad():
        out = det.score_features(odd)
    assert out.maps.shape == (8, 1, 5, 7)
    assert (out.maps[:, 0].flatten(1).argmax(1) == 2 * 7 + 3).float().mean() >= 0.75


def test_feature_batches_with_labelled_defects_and_no_pseudo_anomalies():
    from inspector.learn.training import FeatureTrainingData, _FeatureSampler

    data = FeatureTrainingData([torch.zeros(3, 4, 5)] * 4, labelled=[torch.ones(3, 6, 2)] * 2)
    batch = _FeatureSampler(data, torch.device("cpu"), uses_anomalies=True, needs_anomalies=False)(5)
    assert batch.normal.shape == (5, 3, 4, 5) and batch.anomalous.shape == (5, 3, 6, 2)
    assert batch.anomalous_is_real.all() and batch.anomalous_valid.all()


def test_the_smoothed_map_peak_ranks_a_small_strong_defect_above_faint_noise():
    from models.map_score import smoothed_peak, tile_scores

    blob = torch.zeros(1, 1, 32, 32)
    blob[..., 10:15, 10:15] = 0.5                          # a 5 x 5 defect, strong
    noise = torch.full((1, 1, 32, 32), 0.1)                # faint everywhere
    maps = torch.cat([blob, noise])
    mean = tile_scores(maps.pow(2), maps, None)
    assert mean[1] > mean[0]                               # the paper's mean error: the noise looks worse
    peak = tile_scores(maps.pow(2), maps, 1.0)
    assert peak[0] > peak[1] and peak[1].item() == pytest.approx(0.1)
    assert 0.3 < peak[0].item() < 0.5                      # smoothed: below the blob's 0.5
    assert smoothed_peak(blob, 0.0).item() == 0.5          # sigma 0: the raw map's peak
    one = torch.zeros(1, 1, 4, 4)
    one[..., 1, 1] = 1.0
    assert smoothed_peak(one, 50.0).item() < 1.0            # a kernel wider than the map is cut to it


@pytest.mark.parametrize("method", ["ae", "agad", "ede"])
def test_score_sigma_scores_the_difference_map_peak(method):
    from models.map_score import smoothed_peak

    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    paper = models.create(method, size=32, score_sigma=None).eval()
    peak = models.create(method, size=32, score_sigma=2.0).eval()
    peak.load_state_dict(paper.state_dict())
    a, b = paper.infer(x), peak.infer(x)
    assert torch.allclose(a.maps, b.maps)
    assert torch.allclose(b.scores, smoothed_peak(b.maps, 2.0))
    assert not torch.allclose(a.scores, b.scores)
    with pytest.raises(ValueError, match="score_sigma"):
        models.create(method, size=32, score_sigma=-1.0)


def test_ede_score_sigma_needs_the_image_space():
    with pytest.raises(ValueError, match="score_sigma=null for the latent"):
        models.create("ede", size=32, score_space="latent")
    assert models.create("ede", size=32, score_space="latent", score_sigma=None).score_space == "latent"
