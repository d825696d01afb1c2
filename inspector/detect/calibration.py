"""Decision thresholds and a score scale that reads the same for every method.

A raw score means nothing across methods (a squared error, a distance in an embedding).  The
calibration fixes the threshold on held-out data and maps raw scores through a logistic curve so
that the threshold reads 0.5 and the median good sample 0.1, for every method.  The mapping is
strictly increasing, so ranking (and AUROC) is unchanged, and the raw score is always kept.

The calibration is computed once, at training time, and stored in the model file; it is never
recomputed on whatever data was just scored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

DEFAULT_FALSE_ALARM_RATE = 0.01
#: The normalised score of the median good sample.
_GOOD_MEDIAN_LEVEL = 0.1


@dataclass(frozen=True)
class Calibration:
    threshold: float        # raw score above which an item is anomalous
    good_median: float      # raw median score of the held-out goods
    scale: float            # raw-score units per logit unit of the normalised score
    rule: str               # "false_alarm_rate" or "best_f1"
    target_false_alarm_rate: float | None
    n_good: int
    n_defect: int

    def normalise(self, raw: np.ndarray | float) -> np.ndarray:
        """Raw scores -> (0, 1), 0.5 at the threshold."""
        z = (np.asarray(raw, dtype=np.float64) - self.threshold) / self.scale
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))

    def denormalise(self, normalised: float) -> float:
        """The raw score that ``normalise`` maps to ``normalised`` (in (0, 1)): its inverse."""
        p = min(max(float(normalised), 1e-9), 1 - 1e-9)
        return self.threshold + self.scale * math.log(p / (1 - p))

    def is_anomalous(self, raw: np.ndarray | float) -> np.ndarray:
        return np.asarray(raw) > self.threshold

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """Rebuild a stored calibration; ``ValueError`` with a sentence when it is incomplete or not usable."""
        if not isinstance(d, dict):
            raise ValueError("the calibration is not a table of values")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"the calibration lacks {', '.join(missing)}")
        cal = cls(**{n: d[n] for n in names})
        for name in ("threshold", "good_median", "scale"):
            value = getattr(cal, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"the calibration's {name} is not a finite number ({value!r})")
        if cal.scale <= 0:
            raise ValueError(f"the calibration's scale must be positive, got {cal.scale}")
        return cal


def threshold_at_false_alarm_rate(good_scores: np.ndarray, rate: float) -> float:
    """The smallest threshold at which at most ``rate`` of the goods score above it."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"false-alarm rate must be in [0, 1), got {rate}")
    return float(np.quantile(np.asarray(good_scores, dtype=np.float64), 1.0 - rate, method="higher"))


def best_f1_threshold(good_scores: np.ndarray, defect_scores: np.ndarray) -> float:
    """Threshold maximising F1 of 'defect' when ``score > threshold`` flags an item."""
    scores = np.r_[np.asarray(good_scores, float), np.asarray(defect_scores, float)]
    is_defect = np.r_[np.zeros(len(good_scores), bool), np.ones(len(defect_scores), bool)]
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], is_defect[order]
    tp = np.cumsum(y)
    flagged = np.arange(1, len(s) + 1)
    # Only cut between distinct scores: flag the top k where s[k-1] > s[k].
    cut = np.r_[s[:-1] > s[1:], True]
    f1 = np.where(cut, 2 * tp / (flagged + len(defect_scores)), -1.0)
    k = int(np.argmax(f1)) + 1
    return float(s[k]) if k < len(s) else float(np.nextafter(s[-1], -np.inf))


def calibrate(good_scores: np.ndarray, defect_scores: np.ndarray | None = None, *,
              false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE) -> Calibration:
    """Calibrate on held-out scores.

    With labelled defects the threshold is the best-F1 point; with goods only (the usual case on a
    new line) it is the quantile giving the chosen false-alarm rate.  Goods-only validation is the
    normal case here, not an error that flags everything.
    """
    good = np.asarray(good_scores, dtype=np.float64)
    if good.size == 0:
        raise ValueError("calibration needs at least one held-out good sample")
    defects = np.asarray(defect_scores if defect_scores is not None else [], dtype=np.float64)
    if defects.size:
        threshold, rule, target = best_f1_threshold(good, defects), "best_f1", None
    else:
        threshold = threshold_at_false_alarm_rate(good, false_alarm_rate)
        rule, target = "false_alarm_rate", false_alarm_rate
    median = float(np.median(good))
    spread = threshold - median
    if spread <= 0:  # degenerate: goods all score alike; keep the curve steep but finite
        spread = max(abs(threshold), 1.0) * 1e-6
    scale = spread / math.log((1 - _GOOD_MEDIAN_LEVEL) / _GOOD_MEDIAN_LEVEL)
    return Calibration(threshold=threshold, good_median=median, scale=scale, rule=rule,
                       target_false_alarm_rate=target, n_good=int(good.size), n_defect=int(defects.size))


#: A run whose items are this far above the threshold (normalised score) ...
FAR_ABOVE = 0.9
#: ... this often, over at least ``FIT_MIN_ITEMS`` scored items, was most likely inspected with a model
#: trained on other parts: a line never makes mostly defects.
MISFIT_SHARE = 0.8
FIT_MIN_ITEMS = 20


def fit_warning(normalised: np.ndarray) -> str | None:
    """A sentence when a run's scores say the model does not fit its images, else None."""
    scores = np.asarray(normalised, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if len(scores) < FIT_MIN_ITEMS:
        return None
    far = int((scores > FAR_ABOVE).sum())
    if far < MISFIT_SHARE * len(scores):
        return None
    return (f"{far} of {len(scores)} items scored far above the threshold: the model most likely does not fit "
            f"these images (trained on other parts, another camera or lighting). Train one on this line's good "
            f"parts before trusting these verdicts: Models ▸ Retrain… in the window, or the 'retrain' command.")
