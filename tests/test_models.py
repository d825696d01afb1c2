"""Losses, shapes and the interface of every registered detector."""

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
    normal = torch.zeros(256, 1, 4, 4)
    anomalous = torch.ones(256, 1, 4, 4)
    y_is_one, x_pos, x_neg = sample_triplets(normal, anomalous)
    pos_is_anomalous = x_pos.flatten(1).mean(1) == 1
    neg_is_anomalous = x_neg.flatten(1).mean(1) == 1
    assert torch.equal(pos_is_anomalous, y_is_one)
    assert torch.equal(neg_is_anomalous, ~y_is_one)
    assert 0.3 < y_is_one.float().mean() < 0.7   # anchors 0 and 1 with equal odds


@pytest.mark.parametrize("method", ["ae", "eidn", "agad", "ede"])
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
    if method == "eidn":
        assert out.embeddings.shape == (5, 2)
        assert torch.allclose(out.scores, out.embeddings.norm(dim=1))


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


def test_eidn_training_isolates_anomalies_from_the_origin():
    torch.manual_seed(0)
    det = models.create("eidn", size=16, channels=1)
    det.make_optimizers()
    normal = torch.rand(64, 1, 16, 16) * 0.2 - 0.8
    anomalous = normal.clone()
    anomalous[:, :, 6:10, 6:10] = 0.9   # a bright square on the same surface
    for _ in range(60):
        det.train()
        det.training_step(TrainBatch(normal, anomalous), epoch=1, epochs=1)
    s_normal, s_anomalous = det.infer(normal).scores, det.infer(anomalous).scores
    assert s_anomalous.min() > s_normal.max()


def test_eidn_refuses_batches_without_anomalies():
    det = models.create("eidn", size=16, channels=1)
    det.make_optimizers()
    with pytest.raises(ValueError, match="anomalous"):
        det.training_step(TrainBatch(torch.zeros(4, 1, 16, 16)), epoch=1, epochs=1)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError):
        models.create("ae", size=50)
    with pytest.raises(ValueError):
        models.create("ae", channels=2)
