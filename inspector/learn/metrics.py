"""Detection metrics on raw scores (higher = more anomalous)."""

from __future__ import annotations

import numpy as np


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, ties counted half (the Mann-Whitney U statistic).

    O(n log n) by sorting, so it also serves for pixel AUROC over tens of millions of pixels.
    """
    labels = np.asarray(labels, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError("labels and scores differ in length")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative samples")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # Average rank (1-based) of each group of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], sorted_scores.size]
    group_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(group_rank, ends - starts)
    pos_rank_sum = ranks[labels[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def rates_at(threshold: float, good_scores: np.ndarray, defect_scores: np.ndarray) -> tuple[float, float]:
    """(false-alarm rate on goods, recall on defects) when ``score > threshold`` means anomalous; a
    non-finite score counts as flagged (a NaN never reads as OK)."""
    def flagged(scores) -> float:
        scores = np.asarray(scores, dtype=np.float64)
        return float(np.mean((scores > threshold) | ~np.isfinite(scores))) if len(scores) else float("nan")

    return flagged(good_scores), flagged(defect_scores)
