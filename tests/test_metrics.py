import numpy as np
import pytest

from inspector.learn.metrics import auroc, rates_at


def reference_auroc(labels, scores):
    """P(score of a positive > score of a negative) + 0.5 P(tie), by brute force over pairs."""
    pos = scores[labels]
    neg = scores[~labels]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding makes many ties
    assert auroc(labels, scores) == pytest.approx(reference_auroc(labels, scores), abs=1e-12)


def test_auroc_extremes():
    labels = np.array([0, 0, 1, 1], bool)
    assert auroc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auroc(labels, np.ones(4)) == 0.5


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError):
        auroc(np.zeros(3, bool), np.arange(3.0))


def test_rates_at_threshold_is_strict():
    far, recall = rates_at(0.5, np.array([0.1, 0.5, 0.6]), np.array([0.5, 0.7]))
    assert far == pytest.approx(1 / 3)
    assert recall == pytest.approx(1 / 2)
