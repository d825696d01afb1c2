import numpy as np
import pytest

from inspector.detect.calibration import Calibration, best_f1_threshold, calibrate, threshold_at_false_alarm_rate


def test_good_only_validation_gives_threshold_at_false_alarm_rate():
    rng = np.random.default_rng(0)
    good = rng.normal(1.0, 0.1, 1000)
    cal = calibrate(good, false_alarm_rate=0.01)
    assert cal.rule == "false_alarm_rate"
    assert np.mean(good > cal.threshold) <= 0.01
    assert np.mean(good > cal.threshold) > 0.005  # not simply everything below
    # goods are not all flagged (the failure of some libraries on goods-only validation)
    assert cal.is_anomalous(good).mean() < 0.02


def test_normalised_score_reads_half_at_threshold_and_keeps_order():
    rng = np.random.default_rng(1)
    cal = calibrate(rng.gamma(2.0, 1.0, 200))
    assert cal.normalise(cal.threshold) == pytest.approx(0.5)
    assert cal.normalise(cal.good_median) == pytest.approx(0.1)
    raw = np.sort(rng.gamma(2.0, 3.0, 500))
    norm = cal.normalise(raw)
    assert np.all(np.diff(norm) >= 0) and norm.min() >= 0 and norm.max() <= 1


def test_best_f1_with_labelled_defects():
    good = np.array([0.1, 0.2, 0.3, 0.4])
    bad = np.array([0.35, 0.6, 0.7])
    t = best_f1_threshold(good, bad)
    # Flagging 0.7, 0.6 gives F1 = 2*2/(2+3) = 0.8; flagging down to 0.35 gives 2*3/(4+3) = 0.857.
    assert t == pytest.approx(0.3)
    cal = calibrate(good, bad)
    assert cal.rule == "best_f1" and cal.threshold == pytest.approx(0.3)


def test_best_f1_can_flag_everything():
    assert best_f1_threshold(np.array([0.5]), np.array([0.5, 0.9])) < 0.5


def test_degenerate_goods_all_equal():
    cal = calibrate(np.full(20, 3.0))
    assert cal.threshold == 3.0
    assert not cal.is_anomalous(3.0)
    assert cal.is_anomalous(3.0001)
    assert np.isfinite(cal.normalise(1e9))


def test_calibration_round_trips_through_dict():
    cal = calibrate(np.arange(50.0))
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_bad_inputs():
    with pytest.raises(ValueError):
        calibrate(np.array([]))
    with pytest.raises(ValueError):
        threshold_at_false_alarm_rate(np.arange(3.0), 1.5)


def test_denormalise_inverts_normalise():
    cal = calibrate(np.linspace(0.0, 1.0, 101))
    for p in (0.05, 0.3, 0.5, 0.9):
        assert float(cal.normalise(cal.denormalise(p))) == pytest.approx(p, abs=1e-9)
    assert cal.denormalise(0.5) == pytest.approx(cal.threshold)


def test_a_run_mostly_far_above_the_threshold_says_the_model_does_not_fit():
    from inspector.detect.calibration import fit_warning

    assert fit_warning(np.full(243, 1.0)).startswith("243 of 243 items scored far above the threshold")
    line = np.r_[np.full(90, 0.1), np.full(10, 0.99)]            # a line with some defects: no warning
    assert fit_warning(line) is None
    assert fit_warning(np.full(10, 1.0)) is None                   # too few items to say
    assert fit_warning(np.r_[np.full(30, np.nan), np.full(5, 1.0)]) is None    # NaN is not evidence
