"""How a data set's images are shared out: training, calibration, labelled defects, evaluation.

Two protocols:

- ``test``: train on ``train/good`` less a calibration slice, learn from labelled defects drawn
  from ``train/defect`` (the anomaly fraction G), evaluate on ``test/`` — the figures reported.
- ``validation``: everything from ``train/`` alone — a fifth of the goods and half of each
  defect type of the pool are set aside for evaluation; training, calibration and labelled
  defects come from the rest.  Defaults (settings, thresholds, scales) are chosen on this split and
  never on ``test/``.

The calibration slice is ``MIN_CALIBRATION`` goods (a 1 % false-alarm threshold needs that many to
mean anything), a tenth of the goods where that is more, and never more than half of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import DatasetError, MVTecSet, TestItem, defects_for_fraction

MIN_CALIBRATION = 50
CALIBRATION_FRACTION = 0.1
VALIDATION_FRACTION = 0.2
PROTOCOLS = ("test", "validation")


@dataclass
class Split:
    protocol: str
    train_good: list[Path]
    calibration_good: list[Path]
    labelled: list[Path]               # labelled defects to learn from
    evaluation: list[TestItem]         # what a bench scores


def calibration_count(n_good: int) -> int:
    return min(max(MIN_CALIBRATION, round(n_good * CALIBRATION_FRACTION)), n_good // 2)


def make_split(dataset: MVTecSet, *, anomaly_fraction: float, rng: np.random.Generator,
               protocol: str = "test", learns_from_defects: bool = True) -> Split:
    if protocol not in PROTOCOLS:
        raise DatasetError(f"unknown protocol {protocol!r}: {' or '.join(PROTOCOLS)}")
    goods = [dataset.train_good[i] for i in rng.permutation(len(dataset.train_good))]
    pool = list(dataset.train_defect)
    evaluation: list[TestItem] = dataset.test
    if protocol == "validation":
        n_val = round(len(goods) * VALIDATION_FRACTION)
        held, goods = goods[:n_val], goods[n_val:]
        kinds = sorted({kind for _, kind in pool})
        val_defects, pool_left = [], []
        for kind in kinds:
            of_kind = [item for item in pool if item[1] == kind]
            val_defects += of_kind[::2]
            pool_left += of_kind[1::2]
        if not held or not val_defects:
            raise DatasetError(f"{dataset.root}: the validation protocol needs good images and a pool of labelled "
                               f"defects (train/defect/<type>/) to set some aside")
        evaluation = [TestItem(p, "good") for p in sorted(held)] + [TestItem(p, kind) for p, kind in val_defects]
        pool = pool_left
    n_cal = calibration_count(len(goods))
    if n_cal < 1:
        raise DatasetError(f"need at least 2 good training images to hold one out for calibration, got {len(goods)}")
    calibration, train_good = sorted(goods[:n_cal]), sorted(goods[n_cal:])
    labelled = (defects_for_fraction(pool, len(train_good), anomaly_fraction, rng)
                if learns_from_defects else [])
    return Split(protocol, train_good, calibration, labelled, evaluation)
