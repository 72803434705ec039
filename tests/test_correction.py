"""The series correction (correction.py) on rows of the real recipe table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from nanocrystal.config import resolve
from nanocrystal.correction import SeriesCorrection, scaled_conditions
from nanocrystal.recipes import evaluation_mask, series_keys


@pytest.fixture(scope="module")
def series(table: pd.DataFrame) -> pd.DataFrame:
    """The evaluation rows of one recipe series with at least 4 rows and distinct conditions."""
    rows = table[evaluation_mask(table)].copy()
    rows["key"] = series_keys(rows)
    for _, group in rows.groupby("key"):
        distinct = {tuple(row) for row in scaled_conditions(group).round(6)}
        if len(group) >= 4 and len(distinct) == len(group):
            return group.drop(columns="key").reset_index(drop=True)
    raise AssertionError("no recipe series of 4 rows")


def test_factor_is_the_weighted_mean_of_sibling_log_residuals(series):
    train, valid = series.iloc[:3], series.iloc[3:4]
    predicted = train["Y1"].to_numpy() * np.array([1.2, 0.9, 1.0])  # residuals log(1/1.2), log(1/0.9), 0
    correction = SeriesCorrection.fit(train, predicted, scale=0.5, shrink=0.03)
    distance = np.abs(scaled_conditions(train) - scaled_conditions(valid)[0]).sum(axis=1)
    weights = np.exp(-distance / 0.5)
    residuals = np.log(1 / np.array([1.2, 0.9, 1.0]))
    expected = np.exp((weights * residuals).sum() / (weights.sum() + 0.03))
    np.testing.assert_allclose(correction.factors(valid), [expected])


def test_condition_units_are_20_degrees_5_per_minute_and_log_time():
    rows = pd.DataFrame({"Temperature1": [200.0, 240.0], "Temperature2": [200.0, 220.0], "Speed": [0.0, 10.0],
                         "Time": [0.0, np.e - 1]})
    distance = np.abs(np.diff(scaled_conditions(rows), axis=0)).sum()
    assert distance == pytest.approx(40 / 20 + 20 / 20 + 10 / 5 + 1.0)


def test_a_non_positive_prediction_gives_no_residual(series):
    train, valid = series.iloc[:3], series.iloc[3:4]
    predicted = train["Y1"].to_numpy() * np.array([1.2, 0.9, 1.0])
    with_zero = SeriesCorrection.fit(train, np.array([predicted[0], predicted[1], 0.0]), scale=0.5, shrink=0.03)
    without = SeriesCorrection.fit(train.iloc[:2], predicted[:2], scale=0.5, shrink=0.03)
    assert np.isfinite(with_zero.factors(valid)).all()
    np.testing.assert_allclose(with_zero.factors(valid), without.factors(valid))


def test_exact_training_predictions_change_nothing(series):
    correction = SeriesCorrection.fit(series.iloc[:3], series["Y1"].to_numpy()[:3], scale=0.5, shrink=0.0)
    np.testing.assert_allclose(correction.factors(series), np.ones(len(series)))


def test_a_recipe_without_siblings_keeps_its_prediction(series, table):
    correction = SeriesCorrection.fit(series, series["Y1"].to_numpy() * 2.0, scale=0.5, shrink=0.03)
    others = table[evaluation_mask(table) & ~series_keys(table).isin(series_keys(series))].head(20)
    np.testing.assert_array_equal(correction.factors(others), np.ones(len(others)))
    assert (correction.factors(series) < 0.9).all()  # its own series: predicted twice too large


def test_rows_without_a_usable_size_are_no_siblings(series):
    train = series.iloc[:3].copy()
    train["Y1"] = [25.0, -1.0, 0.0]  # above 20 nm, a failure's -1, no size
    correction = SeriesCorrection.fit(train, np.full(3, 5.0), scale=0.5, shrink=0.03)
    assert len(correction.keys) == 0
    np.testing.assert_array_equal(correction.factors(series), np.ones(len(series)))


def test_far_siblings_count_less_and_shrink_pulls_towards_one(series):
    train, valid = series.iloc[:3], series.iloc[3:4]
    predicted = train["Y1"].to_numpy() / 1.5
    strong = SeriesCorrection.fit(train, predicted, scale=100.0, shrink=0.0).factors(valid)[0]
    np.testing.assert_allclose(strong, 1.5)  # every sibling says "1.5x": weights do not matter then
    shrunk = SeriesCorrection.fit(train, predicted, scale=0.5, shrink=1.0).factors(valid)[0]
    assert 1.0 < shrunk < 1.5


def test_state_round_trips_through_torch_load_weights_only(series, tmp_path):
    correction = SeriesCorrection.fit(series.iloc[:3], series["Y1"].to_numpy()[:3] * 0.8, scale=0.5, shrink=0.03)
    torch.save(correction.to_state(), tmp_path / "c.pt")
    loaded = SeriesCorrection.from_state(torch.load(tmp_path / "c.pt", weights_only=True))
    np.testing.assert_array_equal(loaded.factors(series), correction.factors(series))


def test_bad_parameters_are_refused(series):
    with pytest.raises(ValueError, match="scale > 0"):
        SeriesCorrection.fit(series, series["Y1"].to_numpy(), scale=0.0, shrink=0.03)
    with pytest.raises(ValueError, match="--correction_scale"):
        resolve("cpu", {"correction_shrink": -1.0})


def test_siblings_too_far_to_weigh_anything_give_no_correction(series):
    train, valid = series.iloc[:3].copy(), series.iloc[3:4]
    train["Temperature2"] += 100_000.0  # 5,000 units away: every weight underflows to 0
    correction = SeriesCorrection.fit(train, train["Y1"].to_numpy() * 2.0, scale=0.5, shrink=0.0)
    np.testing.assert_array_equal(correction.factors(valid), [1.0])


def test_series_keys_keep_the_format_checkpoints_saved(table):
    """The series correction saves these keys in checkpoints: another format would silently correct nothing."""
    assert series_keys(table.iloc[[0]]).tolist() == [
        "PbSe|PbO=5.0|Se=5.0|ODE=46.875|OLA=5.015|TOP=5.605|OA=22.214" + "|PlaceHolder=0.0" * 7]
    rounded = series_keys(table.iloc[[0]].assign(A1=5.0000004, B1=1e-7))  # 6 decimals
    assert rounded.iloc[0].startswith("PbSe|PbO=5.0|Se=0.0|")
