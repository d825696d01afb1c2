"""AGAD and EDE: each loss term's sign and value, the discriminator reset, the EDE schedule, and
short trainings that separate generated defects."""

import math

import numpy as np
import pytest
import torch

import models
from inspector.learn.metrics import auroc
from models import TrainBatch, agad
from models.agad import LossWeights, discriminator_loss, generator_loss_anomalous, generator_loss_normal
from models.ede import Passes, ede_losses, phase_weights

LN2 = math.log(2.0)


def full(value, shape=(2, 1, 4, 4)):
    return torch.full(shape, float(value))


def test_agad_normal_loss_terms_and_the_contextual_term_subtracts():
    w = LossWeights()
    y_hat = torch.zeros(2)                                   # BCE(0-logit, 1) = ln 2
    x, x_hat, x_hat2 = full(0.0), full(0.2), full(0.7)       # ||x - x^||_1 = 0.2, ||x^ - x^'||_1 = 0.5
    z, z_hat = full(0.0, (2, 8)), full(0.3, (2, 8))          # ||z - z^||^2 = 0.09
    total, parts = generator_loss_normal(y_hat, x, x_hat, x_hat2, z, z_hat, w)
    assert parts["g_adv"] == pytest.approx(LN2) and parts["g_adcon"] == pytest.approx(0.5)
    assert total.item() == pytest.approx(1 * LN2 + 50 * 0.2 - 15 * 0.5 + 5 * 0.09, rel=1e-5)
    without, _ = generator_loss_normal(y_hat, x, x_hat, x_hat2, z, z_hat, w, contextual=False)
    assert without.item() == pytest.approx(1 * LN2 + 50 * 0.2 + 5 * 0.09, rel=1e-5)


def test_agad_contextual_term_pushes_the_second_reconstruction_away():
    x_hat = full(0.2)
    x_hat2 = full(0.5).requires_grad_()
    total, _ = generator_loss_normal(torch.zeros(2), full(0.0), x_hat, x_hat2, full(0.0, (2, 8)),
                                     full(0.0, (2, 8)), LossWeights())
    total.backward()
    # descent moves x^' up, away from x^ = 0.2: G learns to fail on its own reconstruction
    assert (x_hat2.grad < 0).all()


def test_agad_anomaly_loss_is_reciprocal():
    w = LossWeights()
    args = (torch.zeros(2), full(0.0), full(0.4), full(0.9), full(0.0, (2, 8)), full(0.5, (2, 8)), w)
    # l_adv / BCE(0-logit, 0) + l_adcon / ||x^ - x^'||_1 + l_lat / ||z - z^||^2
    expected = 1 / LN2 + 15 / 0.5 + 5 / 0.25
    assert generator_loss_anomalous(*args).item() == pytest.approx(expected, rel=1e-4)
    e_n = torch.tensor(0.1)
    assert generator_loss_anomalous(*args, normal_error=e_n).item() == pytest.approx(
        expected + 50 * 0.1 / 0.4, rel=1e-4)

    def grad(normal_error) -> torch.Tensor:
        xa_hat = full(0.4).requires_grad_()
        generator_loss_anomalous(torch.zeros(2), full(0.0), xa_hat, full(0.9), full(0.0, (2, 8)), full(0.5, (2, 8)),
                                 w, normal_error=normal_error).backward()
        return xa_hat.grad

    # eq. 3's term pushes G(x_a) away from x_a = 0 (descent raises it): G fails on anomalies, in the
    # reconstruction error that is the score
    assert (grad(e_n) - grad(None) < 0).all()


def test_agad_discriminator_loss_values():
    zeros = torch.zeros(3)
    assert discriminator_loss(zeros, zeros).item() == pytest.approx(2 * LN2)
    assert discriminator_loss(zeros, zeros, zeros).item() == pytest.approx(3 * LN2)
    confident = discriminator_loss(torch.full((3,), 20.0), torch.full((3,), -20.0))
    assert confident.item() < 1e-5                          # what a collapsed discriminator looks like


def test_agad_discriminator_is_reset_when_its_loss_collapses(monkeypatch):
    torch.manual_seed(0)
    det = models.create("agad", size=16, channels=1)
    det.make_optimizers()
    batch = TrainBatch(torch.rand(8, 1, 16, 16) * 2 - 1)
    det.training_step(batch, epoch=1, epochs=1)
    assert det.d_resets == 0
    monkeypatch.setattr(agad, "discriminator_loss", lambda y, y_hat, ya=None: y.sum() * 0 + 1e-7)
    before = det.D.classifier.weight.detach().clone()
    det.training_step(batch, epoch=1, epochs=1)
    assert det.d_resets == 1
    assert not torch.equal(before, det.D.classifier.weight)
    assert not det.optimizers[1].state                      # the optimiser starts afresh too


def test_agad_learns_from_labelled_anomalies_only_unless_asked():
    det = models.create("agad", size=16, channels=1)
    normal = torch.zeros(64, 1, 16, 16)
    anomalous = torch.ones(64, 1, 16, 16)
    is_real = torch.arange(64) < 40
    picked = det._anomalies(TrainBatch(normal, anomalous, is_real))
    assert len(picked) == 32                                # at least 32 a batch (64 // 4 = 16 < 32)
    assert det._anomalies(TrainBatch(normal, anomalous, torch.zeros(64, dtype=torch.bool))) is None
    assert not det.wants_pseudo_anomalies
    assert models.create("agad", size=16, channels=1, pseudo_anomalies=True).wants_pseudo_anomalies


def test_ede_schedule_weights_at_epochs_1_and_n():
    assert phase_weights(1) == (1.0, 0.0)
    assert phase_weights(10) == pytest.approx((0.1, 0.9))


def test_ede_losses_on_hand_made_tensors():
    x = full(0.0)
    p = Passes(z=full(0.0, (2, 4)), x1=full(1.0), x2=full(0.5), z1=full(0.5, (2, 4)), z2=full(0.2, (2, 4)),
               x1p=full(0.3), z1p=full(0.1, (2, 4)))
    rec1, rec2, adv = 1.0 + 0.25, 0.25 + 0.04, 0.09 + 0.01
    l1, l2 = ede_losses(x, p, epoch=1)
    assert (l1.item(), l2.item()) == pytest.approx((rec1, rec2))          # epoch 1: reconstruction only
    l1, l2 = ede_losses(x, p, epoch=4)
    assert l1.item() == pytest.approx(rec1 / 4 - 0.75 * adv)               # EDE1 tells x1' from x ...
    assert l2.item() == pytest.approx(rec2 / 4 + 0.75 * adv)               # ... EDE2 tries to fool it
    l1, l2 = ede_losses(x, p, epoch=4, adversarial=False)
    assert (l1.item(), l2.item()) == pytest.approx((rec1, rec2))
    l1, l2 = ede_losses(x, p, epoch=4, margin=0.05)                         # EDE1's gain bounded ...
    assert l1.item() == pytest.approx(rec1 / 4 - 0.75 * 0.05)
    assert l2.item() == pytest.approx(rec2 / 4 + 0.75 * adv)                # ... EDE2's loss is not
    assert ede_losses(x, p, epoch=4, margin=1.0)[0].item() == pytest.approx(rec1 / 4 - 0.75 * adv)


class _RecordGradients:
    """An optimiser stand-in that keeps the gradients a step computed instead of applying them."""

    def __init__(self, module):
        self.module = module

    def zero_grad(self, set_to_none=True):
        for p in self.module.parameters():
            p.grad = None

    def step(self):
        pass


def _grads(loss, params):
    return [torch.zeros_like(p) if g is None else g
            for p, g in zip(params, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True),
                            strict=True)]


def test_ede_past_its_margin_the_first_decoder_only_reconstructs():
    torch.manual_seed(0)
    det = models.create("ede", size=16, channels=1, margin=1e-6)
    det.optimizers = [_RecordGradients(det)]
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    det.training_step(TrainBatch(x, data_pass=4), epoch=1, epochs=1)
    d1 = [(n, p) for n, p in det.named_parameters() if n.startswith("D1.")]
    r1, _ = ede_losses(x, det.passes(x), 4, beta=det.beta, adversarial=False)
    for (_, param), want in zip(d1, _grads(r1 / 4, [p for _, p in d1]), strict=True):
        assert torch.allclose(param.grad, want, atol=1e-7)
    unbounded = models.create("ede", size=16, channels=1, margin=None)
    unbounded.load_state_dict(det.state_dict())
    unbounded.optimizers = [_RecordGradients(unbounded)]
    unbounded.training_step(TrainBatch(x, data_pass=4), epoch=1, epochs=1)
    assert not all(torch.allclose(p.grad, q.grad, atol=1e-7) for (n, p), q in
                   zip(d1, [q for m, q in unbounded.named_parameters() if m.startswith("D1.")], strict=True))
    with pytest.raises(ValueError, match="margin"):
        models.create("ede", margin=0)


def test_ede_joint_update_leaves_the_adversarial_game_to_the_decoders():
    torch.manual_seed(0)
    det = models.create("ede", size=16, channels=1, margin=None, beta=1.0)     # the paper's unbounded game
    det.optimizers = [_RecordGradients(det)]
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    det.training_step(TrainBatch(x, data_pass=4), epoch=1, epochs=1)
    got = {name: p.grad.clone() for name, p in det.named_parameters()}
    # expected, from the same forward pass: each path its own loss; the shared encoders the sum
    l1, l2 = ede_losses(x, det.passes(x), 4)
    r1, r2 = ede_losses(x, det.passes(x), 4, adversarial=False)
    for part in ("E1", "E2"):
        params = list(getattr(det, part).parameters())
        names = [f"{part}.{n}" for n, _ in getattr(det, part).named_parameters()]
        joint = [a + b for a, b in zip(_grads(l1, params), _grads(l2, params), strict=True)]
        reconstruction = [(a + b) / 4 for a, b in zip(_grads(r1, params), _grads(r2, params), strict=True)]
        for name, want, rec in zip(names, joint, reconstruction, strict=True):
            assert torch.allclose(got[name], want, atol=1e-6)
            assert torch.allclose(got[name], rec, atol=1e-5)       # the adversarial terms cancel here ...
    d2 = [f"D2.{n}" for n, _ in det.D2.named_parameters()]
    for name, want in zip(d2, _grads(l2, list(det.D2.parameters())), strict=True):
        assert torch.allclose(got[name], want, atol=1e-6)           # ... and drive the decoders
    assert not any(torch.allclose(got[n], g, atol=1e-6) for n, g in
                   zip(d2, _grads(r2 / 4, list(det.D2.parameters())), strict=True) if g.abs().sum() > 0)


def test_the_engine_counts_passes_over_the_training_tiles():
    from conftest import DarknessDetector

    from inspector.learn.training import TrainConfig, TrainingData, train

    seen = []

    class Counting(DarknessDetector):
        method = "counting"

        def training_step(self, batch, *, epoch, epochs):
            seen.append((epoch, batch.data_pass))
            return {}

    normal = np.zeros((100, 16, 16, 3), np.uint8)
    train(Counting(size=16), TrainingData(normal), TrainConfig(epochs=2, steps_per_epoch=5, batch_size=32, seed=0))
    # 32 tiles a step over 100: passes 1 1 1 1 | 2 2 2 | 3 3 3 (the engine's epochs are 5 steps)
    assert [p for _, p in seen] == [1, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [e for e, _ in seen] == [1] * 5 + [2] * 5


def test_ede_score_weight_is_a_knob_at_scoring_time():
    torch.manual_seed(0)
    from models.map_score import smoothed_peak

    det = models.create("ede", size=16, channels=1)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        p = det.eval().passes(x)
    # the default: the image error after both paths, its map's peak smoothed by 2 pixels
    assert torch.allclose(det.infer(x).maps, (x - p.x1p).abs(), atol=1e-6)
    assert torch.allclose(det.infer(x).scores, smoothed_peak((x - p.x1p).abs(), 2.0), atol=1e-6)
    det.score_sigma = None                           # the mean error, ||x - x1'||^2
    assert torch.allclose(det.infer(x).scores, (x - p.x1p).pow(2).flatten(1).mean(1), atol=1e-6)
    det.score_w1 = 1.0                               # EDE2's reconstruction error
    assert torch.allclose(det.infer(x).scores, (x - p.x2).pow(2).flatten(1).mean(1), atol=1e-6)
    det.score_space = "latent"                       # the paper's A(x), weighed by the knob
    det.score_w1 = 1.0
    assert torch.allclose(det.infer(x).scores, (p.z - p.z2).pow(2).flatten(1).mean(1), atol=1e-6)
    det.score_w1 = 0.0
    assert torch.allclose(det.infer(x).scores, (p.z - p.z1p).pow(2).flatten(1).mean(1), atol=1e-6)
    with pytest.raises(ValueError):
        models.create("ede", paths=3)


def surfaces(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth grey tiles, and the same tiles with a bright square: a generated defect."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 4, 4, generator=g) * 0.3 - 0.6
    normal = torch.nn.functional.interpolate(base, size=16, mode="bilinear", align_corners=False)
    defect = normal.clone()
    defect[:, :, 5:10, 5:10] = 0.9
    return normal, defect


@pytest.mark.parametrize("method,hparams", [("agad", {}), ("ede", {}), ("ede", {"paths": 1})])
def test_short_training_separates_generated_defects(method, hparams):
    torch.manual_seed(0)
    det = models.create(method, size=16, channels=1, **hparams)
    det.make_optimizers()
    normal, _ = surfaces(256, seed=0)
    for step in range(60):
        det.train()
        det.training_step(TrainBatch(normal[torch.randint(0, 256, (32,))]), epoch=1 + step // 20, epochs=3)
    test_normal, test_defect = surfaces(32, seed=1)
    scores = torch.cat([det.infer(test_normal).scores, det.infer(test_defect).scores]).numpy()
    labels = np.r_[np.zeros(32, bool), np.ones(32, bool)]
    assert auroc(labels, scores) > 0.8
