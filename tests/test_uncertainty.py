"""Conformal size intervals and shape sets (uncertainty.py) and their calibration inside a fold (runs.calibrate)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from nanocrystal.baselines import Candidate, fit_chosen
from nanocrystal.config import resolve
from nanocrystal.recipes import is_solid, series_keys
from nanocrystal.runs import FoldData, calibrate, calibrated_outputs, inner_tree_model, interval_scores
from nanocrystal.splits import paper_folds, task_rows
from nanocrystal.uncertainty import (MIN_CATEGORY_ROWS, FoldCalibration, ShapeCalibration, SizeCalibration,
                                     difficulty_features, set_labels)


def synthetic(n: int, seed: int) -> dict[str, np.ndarray]:
    """Log-normal sizes around a prediction; the noise grows with the members' spread and doubles for a new series
    (known: the true predictive distribution of every row)."""
    rng = np.random.default_rng(seed)
    spread = rng.uniform(0.03, 0.4, n)
    seen = rng.random(n) < 0.6
    proximity = np.where(seen, rng.uniform(0.1, 3.0, n), 0.0)
    sd = spread * np.where(seen, 1.0, 2.0)
    predicted = np.exp(rng.uniform(1.0, 3.0, n))
    size = predicted * np.exp(rng.normal(0.0, sd))
    return {"predicted": predicted, "size": size, "seen": seen, "sd": sd,
            "features": difficulty_features(spread, proximity), "groups": np.arange(n) % 10}


@pytest.fixture(scope="module")
def calibrated():
    rows = synthetic(8000, seed=0)
    fitted = SizeCalibration.fit(np.log(rows["size"] / rows["predicted"]), rows["features"], rows["seen"],
                                 rows["groups"])
    baseline = SizeCalibration.fit(np.log(rows["size"] / rows["predicted"]), rows["features"], rows["seen"],
                                   rows["groups"], normalized=False)
    return fitted, baseline


def test_coverage_of_a_known_noise_model(calibrated):
    fitted, baseline = calibrated
    test = synthetic(20000, seed=1)
    sigma = fitted.sigma(test["features"], test["seen"])
    for confidence in (0.5, 0.8, 0.9, 0.95):
        lo, hi = fitted.interval(test["predicted"], sigma, test["seen"], confidence)
        inside = (test["size"] >= lo) & (test["size"] <= hi)
        # within about 3 standard errors of a coverage given 8,000 calibration rows (3,200 in the smaller category)
        assert inside.mean() == pytest.approx(confidence, abs=0.02)
        for category in (True, False):  # Mondrian: in each category too
            assert inside[test["seen"] == category].mean() == pytest.approx(confidence, abs=0.03)
    lo, hi = fitted.interval(test["predicted"], sigma, test["seen"], 0.9)
    # difficulty-aware: close to the true 90 % half-width of each row, and narrower than the plain baseline
    half_width = np.log(hi / test["predicted"])
    assert np.median(half_width / (norm.ppf(0.95) * test["sd"])) == pytest.approx(1.0, abs=0.1)
    base_lo, base_hi = baseline.interval(test["predicted"], np.ones(len(sigma)), test["seen"], 0.9)
    assert (hi - lo).mean() < 0.9 * (base_hi - base_lo).mean()
    assert ((test["size"] >= base_lo) & (test["size"] <= base_hi)).mean() == pytest.approx(0.9, abs=0.02)


def test_predictive_distribution_matches_the_true_one(calibrated):
    fitted, _ = calibrated
    test = synthetic(4000, seed=2)
    sigma = fitted.sigma(test["features"], test["seen"])
    target, tolerance = test["predicted"] * 1.05, 0.3
    p_within = np.array([fitted.p_within(test["predicted"][[i]], sigma[[i]], test["seen"][[i]], target[i],
                                         tolerance)[0] for i in range(200)])
    z = lambda size: np.log(size / test["predicted"][:200]) / test["sd"][:200]  # noqa: E731
    truth = norm.cdf(z(target[:200] + tolerance)) - norm.cdf(z(target[:200] - tolerance))
    assert np.abs(p_within - truth).mean() < 0.03
    cdf = fitted.cdf(test["predicted"], sigma, test["seen"], test["size"])  # PIT: uniform on the true sizes
    assert np.histogram(cdf, bins=10, range=(0, 1))[0].min() > 0.08 * len(cdf)


def test_a_new_series_gets_a_wider_interval_than_a_seen_one(calibrated):
    fitted, _ = calibrated
    features = difficulty_features(np.array([0.2, 0.2]), np.array([1.0, 0.0]))
    lo, hi = fitted.interval(np.array([8.0, 8.0]), fitted.sigma(features, np.array([True, False])),
                             np.array([True, False]), 0.9)
    assert hi[1] - lo[1] > 1.5 * (hi[0] - lo[0])


def test_small_categories_merge_and_state_round_trips(calibrated):
    rows = synthetic(400, seed=3)
    rows["seen"][: 400 - MIN_CATEGORY_ROWS + 1] = True  # only MIN_CATEGORY_ROWS - 1 rows of a new series
    few = SizeCalibration.fit(np.log(rows["size"] / rows["predicted"]), rows["features"], rows["seen"], rows["groups"])
    assert not few.mondrian and (few.bins == 0).all()
    fitted, _ = calibrated
    again = SizeCalibration.from_state(json.loads(json.dumps(fitted.to_state())))
    test = synthetic(50, seed=4)
    sigma = fitted.sigma(test["features"], test["seen"])
    np.testing.assert_array_equal(again.sigma(test["features"], test["seen"]), sigma)
    np.testing.assert_array_equal(np.array(again.interval(test["predicted"], sigma, test["seen"], 0.9)),
                                  np.array(fitted.interval(test["predicted"], sigma, test["seen"], 0.9)))
    pooled = SizeCalibration.pool([fitted, again])
    assert len(pooled.log_residuals) == 2 * len(fitted.log_residuals) and pooled.mondrian


def test_shape_sets_cover_and_grow_with_confidence():
    rng = np.random.default_rng(0)

    def draw(n):
        probabilities = rng.dirichlet(np.full(5, 0.4), n)
        return probabilities, np.array([rng.choice(5, p=p) for p in probabilities])

    calibration = ShapeCalibration.fit(*draw(3000))
    probabilities, shape = draw(10000)
    sets = {c: calibration.sets(probabilities, c) for c in (0.8, 0.9)}
    assert sets[0.9][np.arange(len(shape)), shape].mean() == pytest.approx(0.9, abs=0.015)
    assert (sets[0.9] >= sets[0.8]).all() and sets[0.9].sum() > sets[0.8].sum()
    names = ["a", "b", "c", "d", "e"]
    assert set_labels(np.array([[True, False, True, False, False]]), np.array([[0.2, 0.1, 0.6, 0.05, 0.05]]),
                      names) == ["c|a"]  # most probable first
    again = ShapeCalibration.from_state(json.loads(json.dumps(calibration.to_state())))
    np.testing.assert_array_equal(again.sets(probabilities, 0.9), sets[0.9])


# ---- inside a fold: calibration rows are the fold's training rows only ------------------------------------------------

@pytest.fixture(scope="module")
def small_fold(table):
    """Fold 0 of the paper split, size rows, cut to stay fast."""
    fold = paper_folds(table, 5, 0)[0]
    train = table.iloc[task_rows(table, fold.train, "size")[:900]].reset_index(drop=True)
    valid = table.iloc[fold.valid[:60]].reset_index(drop=True)
    return FoldData(train, valid, ~is_solid(train).to_numpy(), np.zeros(len(train), bool))


def fold_intervals(cfg, data, store) -> tuple[FoldCalibration, dict]:
    """What runs.run_fold does for a tree model: fit, calibrate on inner folds of the training rows, apply (20 extra
    trees, fixed: the selection is not under test)."""
    fitted = fit_chosen(cfg, data.train, data.train_weak, store, Candidate({"n_estimators": 20}, 1.0))
    calibration = calibrate(cfg, data, inner_tree_model(cfg, [fitted], store, 11))
    prediction = fitted.predict(cfg, data.valid, 11)
    spread = np.zeros(len(data.valid))
    return calibration, calibrated_outputs(cfg, calibration, data.valid, prediction, spread)


def test_held_out_labels_move_no_interval(small_fold, descriptors):
    cfg = resolve("cpu", {"model": "et", "threads": 1, "calibration_folds": 3})
    first_calibration, first = fold_intervals(cfg, small_fold, descriptors)
    relabelled = small_fold.valid.assign(Y1=small_fold.valid["Y1"][::-1].to_numpy() * 3.0, Num=5)
    second_calibration, second = fold_intervals(cfg, FoldData(small_fold.train, relabelled, small_fold.train_weak,
                                                              small_fold.train_augmented), descriptors)
    for key in ("lo", "hi", "sigma", "seen", "baseline_lo", "baseline_hi"):
        np.testing.assert_array_equal(first[key], second[key])
    assert first_calibration.to_state(with_siblings=False) == second_calibration.to_state(with_siblings=False)
    # ... while the training labels do move them (the test can fail)
    train = small_fold.train.assign(Y1=small_fold.train["Y1"] * np.where(np.arange(len(small_fold.train)) % 2, 1.5, 0.7))
    _, moved = fold_intervals(cfg, FoldData(train, small_fold.valid, small_fold.train_weak,
                                            small_fold.train_augmented), descriptors)
    assert not np.allclose(first["hi"], moved["hi"])


def test_calibration_rows_are_training_rows_of_the_validation_kind(small_fold, descriptors):
    """Every scored calibration row is a solid training row; the grouped split's calibration rows are all of new
    series (whole series are held out, as in the outer split)."""
    for split, expect_seen in (("paper", True), ("grouped", False)):
        cfg = resolve("cpu", {"model": "et", "threads": 1, "calibration_folds": 3, "split": split})
        calibration, outputs = fold_intervals(cfg, small_fold, descriptors)
        assert len(calibration.size.log_residuals) == int(is_solid(small_fold.train).sum())
        seen_rows = (calibration.size.bins == 0).sum() if calibration.size.mondrian else None
        if expect_seen:
            assert calibration.size.mondrian and seen_rows > MIN_CATEGORY_ROWS
        else:  # no calibration row has a sibling in its inner fit part: one category
            assert not calibration.size.mondrian
    # seen on the validation rows: a training row of the same series exists
    keys = set(series_keys(small_fold.train))
    np.testing.assert_array_equal(outputs["seen"], series_keys(small_fold.valid).isin(keys).to_numpy())


def test_interval_scores_by_series_and_baseline():
    frame = pd.DataFrame({"true": [5.0, 5.0, 9.0, 9.0], "lo": [4.0, 6.0, 8.0, 1.0], "hi": [6.0, 7.0, 10.0, 2.0],
                          "baseline_lo": [0.0] * 4, "baseline_hi": [20.0] * 4, "series": ["seen", "seen", "new", "new"]})
    scores = interval_scores(frame)
    assert scores["coverage"] == 0.5 and scores["mean_width_nm"] == 1.5
    assert scores["seen_series"] == {"coverage": 0.5, "mean_width_nm": 1.5, "rows": 2}
    assert scores["new_series"]["coverage"] == 0.5 and scores["baseline"]["coverage"] == 1.0
