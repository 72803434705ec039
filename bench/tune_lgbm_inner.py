"""Optuna search of LightGBM's size hyper-parameters on inner folds only: where LightGBM's "new_series"
candidate comes from.

The objective is the MAE of one LightGBM fit (log size, the run's features with the chemistry columns) over the
inner folds of `bench/size_inner_cv.py` (each outer fold's training rows cut into 3 folds; on the grouped split they
keep recipe series whole, so every scored row is a new series to its model). The held-out outer folds are never read.
The first trial is the cpu preset's LightGBM (leaf 3, Huber 0.05, weak rows at 0.1), so the table starts from it.

    python bench/tune_lgbm_inner.py --split grouped --trials 60     # ~12 min on one core
    python bench/tune_lgbm_inner.py --split grouped --evaluate '{"num_leaves": 38, ...}' --seeds 3

`--evaluate PARAMS` scores one candidate (the mean of `--seeds` fits, as `--lgbm_seeds`) instead of searching, beside
the preset's candidates: alone and after the series correction on each model's own fit rows (scale 0.25, shrink 0;
no sibling crosses a grouped inner fold, so there the two columns agree).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from size_inner_cv import inner_parts  # noqa: E402

from nanocrystal.baselines import FIXED, featurizer, make_estimator  # noqa: E402
from nanocrystal.config import ROOT, resolve  # noqa: E402
from nanocrystal.correction import SeriesCorrection  # noqa: E402
from nanocrystal.descriptors import load_descriptors  # noqa: E402
from nanocrystal.recipes import load_dataset  # noqa: E402

PRESET = {"min_child_samples": 3, "objective": "huber", "alpha": 0.05}  # over baselines.FIXED, weak rows at 0.1


def featurized(split: str, data_dir: str) -> list[dict]:
    """Every inner fold's fit and scored rows as the run's tree features (chemistry columns included)."""
    cfg = resolve("cpu", {"data_dir": data_dir, "split": split, "chemistry_features": True, "workers": 1})
    store = load_descriptors(cfg.feats_path)
    parts = []
    for _, _, part in inner_parts(cfg, load_dataset(cfg.data_dir)):
        features = featurizer(cfg, store).fit(part.train)
        parts.append({"part": part, "x_fit": features.transform(part.train), "x_scored": features.transform(part.valid),
                      "y_fit": part.train["Y1"].to_numpy(float), "y_scored": part.valid["Y1"].to_numpy(float),
                      "weak": np.asarray(part.train_weak, bool)})
    return parts


def fit_scores(parts: list[dict], params: dict, weak_weight: float, seeds: list[int],
               corrected: bool = True) -> tuple[float, float | None]:
    """MAE over every scored row, alone and (with `corrected`) after the series correction; the mean of log size
    over the seeds. The search scores alone: it skips predicting the fit rows, which only the correction needs."""
    errors, corrected_errors = [], []
    for p in parts:
        scored, own = [], []
        for seed in seeds:
            estimator = make_estimator("lgbm", "size", params, seed, n_jobs=1)  # fits log(size)
            estimator.fit(p["x_fit"], p["y_fit"], sample_weight=np.where(p["weak"], weak_weight, 1.0))
            scored.append(np.log(estimator.predict(p["x_scored"])))
            if corrected:
                own.append(np.log(estimator.predict(p["x_fit"])))
        size_nm = np.exp(np.mean(scored, axis=0))
        errors.append(np.abs(size_nm - p["y_scored"]))
        if corrected:
            factors = SeriesCorrection.fit(p["part"].train, np.exp(np.mean(own, axis=0)), 0.25, 0.0).factors(
                p["part"].valid)
            corrected_errors.append(np.abs(size_nm * factors - p["y_scored"]))
    mae = float(np.concatenate(errors).mean())
    return mae, float(np.concatenate(corrected_errors).mean()) if corrected else None


def search_space(trial: optuna.Trial) -> tuple[dict, float]:
    params = dict(num_leaves=trial.suggest_int("num_leaves", 7, 127, log=True),
                  min_child_samples=trial.suggest_int("min_child_samples", 2, 80, log=True),
                  learning_rate=trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
                  n_estimators=trial.suggest_int("n_estimators", 100, 1000, log=True),
                  colsample_bytree=trial.suggest_float("colsample_bytree", 0.1, 0.8),
                  subsample=trial.suggest_float("subsample", 0.5, 1.0), subsample_freq=1,
                  reg_lambda=trial.suggest_float("reg_lambda", 1e-3, 30, log=True),
                  objective="huber", alpha=trial.suggest_float("alpha", 0.02, 0.5, log=True),
                  extra_trees=trial.suggest_categorical("extra_trees", [False, True]))
    return params, trial.suggest_categorical("weak_weight", [0.1, 0.3, 1.0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="grouped", choices=["paper", "grouped"])
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--sampler_seed", type=int, default=0)
    parser.add_argument("--evaluate", default="", help="JSON of LightGBM parameters (and weak_weight) to score")
    parser.add_argument("--seeds", type=int, default=1, help="--evaluate: the mean of this many model seeds")
    args = parser.parse_args(argv)
    start = time.time()
    parts = featurized(args.split, args.data_dir)
    print(f"{len(parts)} inner folds, {sum(len(p['y_scored']) for p in parts)} scored rows ({args.split} split)")
    if args.evaluate:
        given = json.loads(args.evaluate)
        weak_weight = given.pop("weak_weight", 0.1)
        seeds = list(range(args.seeds))
        rows = [("preset, leaf 3", PRESET, 0.1), ("preset, leaf 20", {**PRESET, "min_child_samples": 20}, 0.1),
                ("given", given, weak_weight)]
        for label, params, weight in rows:
            alone, corrected = fit_scores(parts, params, weight, seeds)
            print(f"{label:16s} alone {alone:.4f}  corrected {corrected:.4f}  ({time.time() - start:.0f} s)", flush=True)
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=args.sampler_seed))
    study.enqueue_trial({**{k: FIXED["size"]["lgbm"][k] for k in ("num_leaves", "learning_rate", "n_estimators",
                                                                  "colsample_bytree")},
                         "min_child_samples": 3, "subsample": 1.0, "reg_lambda": 1e-3, "alpha": 0.05,
                         "extra_trees": False, "weak_weight": 0.1})

    def objective(trial: optuna.Trial) -> float:
        params, weak_weight = search_space(trial)
        return fit_scores(parts, params, weak_weight, [0], corrected=False)[0]

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        print(f"trial {trial.number:3d}  MAE {trial.value:.4f}  best {study.best_value:.4f}  "
              f"({time.time() - start:.0f} s)", flush=True)
    study.optimize(objective, n_trials=args.trials, callbacks=[report])
    print(f"first trial (the preset): {study.trials[0].value:.4f}; best: {study.best_value:.4f}")
    print(json.dumps(study.best_params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
