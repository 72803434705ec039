"""Does a new recipe series share its model's error with similar series? A residual model over recipe similarity,
measured on the grouped split's inner folds only.

For each inner fold of `bench/tune_lgbm_inner.py` (the cpu preset's LightGBM, one fit): the out-of-fold log
residuals of the fit rows (3 sub-folds that keep recipe series whole, so each residual is a new-series error, as the
scored rows' are), then each scored row moved by the mean of those residuals over its neighbours: the fit rows with
the same product and the same set of substances (other amounts: another series), or with the same product only,
shrunk by n / (n + shrink). Prints the correlation of a scored row's own log residual with its neighbours' mean and
the MAE at each shrink. The held-out outer folds are never read.

    python bench/neighbour_residuals.py        # ~1 min on one core
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_lgbm_inner import PRESET, featurized  # noqa: E402

from nanocrystal.baselines import make_estimator  # noqa: E402
from nanocrystal.config import ROOT  # noqa: E402
from nanocrystal.features import USED_NAMES  # noqa: E402
from nanocrystal.recipes import EMPTY_NAME, PRODUCT_NAME, series_keys  # noqa: E402

SHRINKS = (0.0, 1.0, 3.0, 10.0)


def log_prediction(x_fit: np.ndarray, y_fit: np.ndarray, weak: np.ndarray, x: np.ndarray) -> np.ndarray:
    estimator = make_estimator("lgbm", "size", PRESET, 0, n_jobs=1)
    return np.log(estimator.fit(x_fit, y_fit, sample_weight=np.where(weak, 0.1, 1.0)).predict(x))


def neighbour_keys(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Product + the sorted set of substance names (amounts ignored), and the product alone."""
    names = rows[USED_NAMES].to_numpy(object)
    products = rows[PRODUCT_NAME].astype(str).to_numpy()
    substances = [",".join(sorted(str(n) for n in row if n != EMPTY_NAME)) for row in names]
    return {"substances": np.array([f"{p}|{s}" for p, s in zip(products, substances)], object),
            "product": products.astype(object)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    args = parser.parse_args(argv)
    rows = []
    for p in featurized("grouped", args.data_dir):
        part = p["part"]
        own_residual = np.log(p["y_scored"]) - log_prediction(p["x_fit"], p["y_fit"], p["weak"], p["x_scored"])
        # out-of-fold residuals of the fit rows like the scored ones (not weak), sub-folds by recipe series
        series = series_keys(part.train).to_numpy(object)
        pool = np.flatnonzero(~p["weak"])
        fit_residual = np.full(len(p["y_fit"]), np.nan)
        for _, scored in GroupKFold(3, shuffle=True, random_state=0).split(pool, groups=series[pool]):
            rest = ~np.isin(series, np.unique(series[pool[scored]]))
            rows_out = pool[scored]
            fit_residual[rows_out] = np.log(p["y_fit"][rows_out]) - log_prediction(
                p["x_fit"][rest], p["y_fit"][rest], p["weak"][rest], p["x_fit"][rows_out])
        fit_keys, scored_keys = neighbour_keys(part.train), neighbour_keys(part.valid)
        known = np.isfinite(fit_residual)
        for i in range(len(own_residual)):
            row = {"residual": own_residual[i], "true": p["y_scored"][i]}
            for level in fit_keys:
                found = known & (fit_keys[level] == scored_keys[level][i])
                row[f"{level}_mean"] = fit_residual[found].mean() if found.any() else np.nan
                row[f"{level}_n"] = int(found.sum())
            rows.append(row)
    table = pd.DataFrame(rows)
    predicted = table["true"] / np.exp(table["residual"])
    print(f"{len(table)} inner-scored rows; LightGBM alone MAE {np.abs(predicted - table['true']).mean():.4f}")
    for level in ("substances", "product"):
        has = table.dropna(subset=[f"{level}_mean"])
        correlation = np.corrcoef(has["residual"], has[f"{level}_mean"])[0, 1]
        maes = []
        for shrink in SHRINKS:
            n = table[f"{level}_n"]
            move = np.where(n > 0, table[f"{level}_mean"].fillna(0.0) * n / (n + shrink), 0.0)
            maes.append(np.abs(predicted * np.exp(move) - table["true"]).mean())
        print(f"same {level}: {len(has)} rows with neighbours, correlation {correlation:.3f}; MAE at shrink "
              + ", ".join(f"{s:g}: {m:.4f}" for s, m in zip(SHRINKS, maes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
