"""Inner cross-validation for the size blend: which tree models, which target, which weight beside the transformer.

Only training rows are scored: for each outer fold of the paper split (seed 0), the 3 inner folds that `--model lgbm`
uses for its own selection (`baselines.inner_splits`: the fold's training rows like the validation rows, scored in
turn) give out-of-fold predictions of every tree variant below; the transformer (the cpu preset alone, 2 members)
is trained on the first `--transformer_splits` inner folds of each outer fold (it costs ~3 min per inner fold on
2 cores). Then the MAE of each tree variant, and of each blend (1 - w) * transformer + w * trees on the inner folds the
transformer has, then of each blend followed by the series correction (correction.py; each model's predictions for its
own inner training rows give the residuals), over a grid of its scale and shrink. The held-out outer folds are never
read. The inner-validation tables of docs/size_model.md come from it:

    python bench/size_inner_cv.py --variants lgbm_log et_log --out runs/size-inner-cv.csv   # ~12 min on 2 cores
    python bench/size_inner_cv.py --variants lgbm_nm lgbm_log --transformer_splits 0      # trees only, ~1 min
    python bench/size_inner_cv.py --split grouped --variants --set shape_aux_weight=0.3    # a transformer variant alone
    python bench/size_inner_cv.py --split grouped --variants lgbm_log et_log --transformer_splits 0 --series_power 1
        # the trees with every recipe series weighing alike in their fits
    python bench/size_inner_cv.py --split grouped --set dropout=0.1 --trees_from runs/size-inner-grouped.csv \
        --corrected_blends lgbm_log_new_series+et_log   # a transformer variant beside trees saved by an earlier --out
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanocrystal.baselines import LGBM_NEW_SERIES, featurizer, inner_splits, make_estimator  # noqa: E402
from nanocrystal.config import ROOT, Config, ConfigError, field_values, resolve  # noqa: E402
from nanocrystal.correction import SeriesCorrection  # noqa: E402
from nanocrystal.descriptors import load_descriptors  # noqa: E402
from nanocrystal.features import CHEMISTRY_BLOCKS, CHEMISTRY_NAMES, chemistry_columns  # noqa: E402
from nanocrystal.recipes import load_dataset, series_keys  # noqa: E402
from nanocrystal.runs import FoldData, fit_neural_fold, fold_data  # noqa: E402
from nanocrystal.splits import combined_table, make_folds  # noqa: E402
from nanocrystal.substances import package_chemistry  # noqa: E402

# name -> (model, parameters over baselines.FIXED, log target, weak-row weight)
VARIANTS = {
    "lgbm_nm": ("lgbm", {}, False, 0.1),
    "lgbm_log": ("lgbm", {}, True, 0.1),
    "lgbm_log_l1": ("lgbm", dict(objective="l1"), True, 0.1),
    "lgbm_log_huber": ("lgbm", dict(objective="huber", alpha=0.15), True, 0.1),
    "lgbm_log_huber_a05": ("lgbm", dict(objective="huber", alpha=0.05), True, 0.1),  # --lgbm_huber_delta 0.05
    "lgbm_log_huber_a30": ("lgbm", dict(objective="huber", alpha=0.3), True, 0.1),
    "lgbm_log_huber_a05_leaf20": ("lgbm", dict(objective="huber", alpha=0.05, min_child_samples=20), True, 0.1),
    # size never falls with reaction time (Time and log_time, feature columns 3 and 4); "monotone" names the columns
    "lgbm_log_huber_a05_mono": ("lgbm", dict(objective="huber", alpha=0.05, monotone=(3, 4)), True, 0.1),
    "lgbm_log_new_series": ("lgbm", LGBM_NEW_SERIES, True, 1.0),  # bench/tune_lgbm_inner.py's best on new series
    "rf_log": ("rf", {}, True, 0.3),
    "et_log": ("et", {}, True, 1.0),
    "et_log_200": ("et", dict(n_estimators=200), True, 1.0),
    "et_log_half": ("et", dict(max_features=0.5), True, 0.3),
    "et_log_leaf3": ("et", dict(min_samples_leaf=3), True, 1.0),
    "et_log_leaf5": ("et", dict(min_samples_leaf=5), True, 1.0),
    "et_log_boot": ("et", dict(bootstrap=True, max_samples=0.7), True, 1.0),
}
BLENDS = {"lgbm_nm": ["lgbm_nm"], "lgbm_log": ["lgbm_log"], "et_log": ["et_log"],
          "lgbm_log + et_log": ["lgbm_log", "et_log"], "lgbm_log + et_log + rf_log": ["lgbm_log", "et_log", "rf_log"]}
WEIGHTS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 1.0)
CORRECTION_GRID = [(scale, shrink) for scale in (0.25, 0.5, 1.0) for shrink in (0.0, 0.01, 0.03, 0.1)]


def inner_parts(cfg: Config, dataset):
    """(outer fold, inner index, FoldData of the inner fit and scored rows) for every inner fold; on the grouped split
    the inner folds are grouped by recipe series too (`splits.inner_groups`)."""
    table = combined_table(dataset)
    for fold in make_folds(table, cfg.split, cfg.n_folds, cfg.seed, []):
        data = fold_data(cfg, table, fold, dataset.n_shapes)
        weak = np.asarray(data.train_weak, bool)
        for inner, (fit_rows, scored_rows) in enumerate(inner_splits(replace(cfg, model="lgbm"), data.train, weak)):
            part = FoldData(data.train.iloc[fit_rows].reset_index(drop=True),
                            data.train.iloc[scored_rows].reset_index(drop=True), weak[fit_rows],
                            np.zeros(len(fit_rows), bool))
            yield fold.index, inner, part


def saved_trees(saved: pd.DataFrame, outer: int, inner: int, part: FoldData, variants: list[str]
                ) -> dict[str, np.ndarray]:
    """The tree columns of an earlier run's --out CSV for this inner fold's scored rows, in their order."""
    rows = saved[(saved["outer"] == outer) & (saved["inner"] == inner)].set_index("ID")
    missing = set(part.valid["ID"]) - set(rows.index)
    if missing:
        raise SystemExit(f"--trees_from: fold{outer} inner {inner} lacks {len(missing)} scored rows (another split?)")
    return {name: rows.loc[part.valid["ID"], name].to_numpy(float) for name in variants}


def chemistry_blocks(table: pd.DataFrame, blocks: list[str]) -> np.ndarray:
    """The columns of these blocks of features.chemistry_columns (--chemistry_features is all three)."""
    wanted = [name for block in blocks for name in CHEMISTRY_BLOCKS[block]]
    return chemistry_columns(table, package_chemistry())[:, [CHEMISTRY_NAMES.index(name) for name in wanted]]


def series_weights(train: pd.DataFrame, power: float) -> np.ndarray:
    """Each fit row's weight n^-power, n the number of fit rows of its recipe series, scaled to a mean of 1: at
    power 1 every series weighs the same in the fit, whatever its number of time or temperature points."""
    keys = series_keys(train)
    weights = keys.map(keys.value_counts()).to_numpy(float) ** -power
    return weights / weights.mean()


def tree_predictions(cfg: Config, part: FoldData, variants: list[str], threads: int, model_seeds: list[int],
                     chemistry: list[str], series_power: float = 0.0
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each variant's predictions for the scored rows and for its own fit rows, averaged over the model seeds."""
    store = load_descriptors(cfg.feats_path)
    features = featurizer(cfg, store).fit(part.train)
    x_train, x_valid = (np.hstack([features.transform(rows), chemistry_blocks(rows, chemistry)])
                        for rows in (part.train, part.valid))
    y_train = part.train["Y1"].to_numpy(float)
    by_series = series_weights(part.train, series_power)
    scored, own = {}, {}
    for name in variants:
        model, params, log_target, weak_weight = VARIANTS[name]
        if "monotone" in params:
            increasing = np.isin(np.arange(x_train.shape[1]), params["monotone"]).astype(int)
            params = {**{k: v for k, v in params.items() if k != "monotone"}, "monotone_constraints": list(increasing)}
        weights = np.where(part.train_weak, weak_weight, 1.0) * by_series
        each_scored, each_own = [], []
        for seed in model_seeds if model == "lgbm" else model_seeds[:1]:  # as --lgbm_seeds
            estimator = make_estimator(model, "size", params, seed, threads)  # fits log(size)
            estimator = estimator if log_target else estimator.regressor  # the same model on nm
            estimator.fit(x_train, y_train, sample_weight=weights)
            each_scored.append(estimator.predict(x_valid))
            each_own.append(estimator.predict(x_train))
        # the seeds' mean of log(size), as baselines.predict_mean (nm models: the plain mean)
        average = (lambda p: np.exp(np.mean(np.log(p), axis=0))) if log_target else (lambda p: np.mean(p, axis=0))
        scored[name], own[name] = average(each_scored), average(each_own)
    return scored, own


def transformer_prediction(args: tuple[Config, FoldData, int]) -> tuple[np.ndarray, np.ndarray]:
    """The transformer's predictions for the scored rows and for its own fit rows (one training run)."""
    cfg, part, n_shapes = args
    import torch

    torch.set_num_threads(1)
    store = load_descriptors(cfg.feats_path)
    both = replace(part, valid=pd.concat([part.valid, part.train], ignore_index=True))
    prediction, _ = fit_neural_fold(cfg, both, store, n_shapes, logging.getLogger(__name__))
    size_nm = np.asarray(prediction["size"])
    return size_nm[:len(part.valid)], size_nm[len(part.valid):]


def corrected_mae(indices: list[int], parts: list, frames: list[pd.DataFrame], own: list[dict[str, np.ndarray]],
                  combine: Callable[[dict[str, np.ndarray]], np.ndarray], scale: float | None, shrink: float) -> float:
    """MAE over the inner folds `indices` of combine(columns), then (unless scale is None) the series correction,
    whose residuals are combine() of the fit rows' own predictions."""
    errors = []
    for index in indices:
        part = parts[index][2]
        scored_nm = combine({name: column.to_numpy() for name, column in frames[index].items()})
        if scale is not None:
            correction = SeriesCorrection.fit(part.train, combine(own[index]), scale, shrink)
            scored_nm = scored_nm * correction.factors(part.valid)
        errors.append(np.abs(scored_nm - frames[index]["true"].to_numpy()))
    return float(np.concatenate(errors).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--transformer_splits", type=int, default=1, help="inner folds per outer fold (0: none)")
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    parser.add_argument("--split", default="paper", choices=["paper", "grouped"],
                        help="the outer split; on grouped, inner folds hold out whole recipe series")
    parser.add_argument("--chemistry", nargs="*", default=[], choices=list(CHEMISTRY_BLOCKS),
                        help="blocks of the chemistry columns appended to the trees' features")
    parser.add_argument("--out", default="", help="CSV of every scored row's predictions")
    parser.add_argument("--model_seed", type=int, default=0,
                        help="the tree models' random state (the splits keep seed 0): how much a figure is seed noise")
    parser.add_argument("--seeds", type=int, default=1, help="LightGBM variants: the mean of this many model seeds")
    parser.add_argument("--series_power", type=float, default=0.0,
                        help="the trees' fit rows weigh n^-P, n the rows of their recipe series (1: series weigh alike)")
    parser.add_argument("--corrected_blends", nargs="+", default=["lgbm_log+et_log"],
                        help="tree variants joined by '+', averaged in the series-correction tables (one table each)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="the transformer's Config fields over the cpu preset's, e.g. shape_aux_weight=0.3 (JSON)")
    parser.add_argument("--trees_from", default="",
                        help="an earlier run's --out CSV: its tree columns instead of fitting the trees (the same split;"
                             " the trees' options are ignored; no series correction, which needs the trees' fits of"
                             " their own rows)")
    args = parser.parse_args(argv)
    saved = pd.read_csv(args.trees_from) if args.trees_from else None
    if saved is not None:
        args.variants = [name for name in saved.columns if name in VARIANTS]
    for corrected_blend in args.corrected_blends:
        unknown = set(corrected_blend.split("+")) - set(VARIANTS)
        if unknown:
            parser.error(f"--corrected_blends {corrected_blend}: unknown variants {', '.join(sorted(unknown))}")
    # the transformer alone, uncalibrated: calibration would refit it on 10 inner folds of each inner fold
    try:
        cfg = resolve("cpu", {"data_dir": args.data_dir, "split": args.split, "tree_blend": 0.0,
                              "series_correction": False, "calibration_folds": 0, "workers": 1,
                              **field_values(args.set)})
    except ConfigError as error:
        parser.error(str(error))
    start = time.time()
    dataset = load_dataset(cfg.data_dir)
    parts = list(inner_parts(cfg, dataset))
    frames, own, neural = [], [], []
    for outer, inner, part in parts:
        if saved is None:
            trees, trees_own = tree_predictions(cfg, part, args.variants, threads=2,
                                                model_seeds=list(range(args.model_seed, args.model_seed + args.seeds)),
                                                chemistry=args.chemistry, series_power=args.series_power)
        else:
            trees, trees_own = saved_trees(saved, outer, inner, part, args.variants), {}
        frames.append(pd.DataFrame({"outer": outer, "inner": inner, "ID": part.valid["ID"],
                                    "true": part.valid["Y1"].to_numpy(float), **trees}))
        own.append(trees_own)
        print(f"fold{outer} inner {inner}: trees {'read' if saved is not None else 'done'} "
              f"({time.time() - start:.0f} s)", flush=True)
        if inner < args.transformer_splits:
            neural.append((len(frames) - 1, part))
    if neural:  # two inner folds at a time, one thread each
        with ProcessPoolExecutor(2) as pool:
            jobs = [(cfg, p, dataset.n_shapes) for _, p in neural]
            for (index, _), (scored_nm, own_nm) in zip(neural, pool.map(transformer_prediction, jobs)):
                frames[index]["transformer"] = scored_nm
                own[index]["transformer"] = own_nm
    rows = pd.concat(frames, ignore_index=True)
    if args.out:
        rows.to_csv(args.out, index=False)
    print(f"\n{len(rows)} inner-scored rows, {time.time() - start:.0f} s")
    for name in args.variants:
        print(f"{name:28s} MAE {np.abs(rows[name] - rows['true']).mean():.4f}")
    if "transformer" in rows:
        with_t = rows.dropna(subset=["transformer"])
        print(f"{'transformer':28s} MAE {np.abs(with_t['transformer'] - with_t['true']).mean():.4f} "
              f"({len(with_t)} rows)")
        blends = {blend: members for blend, members in BLENDS.items() if set(members) <= set(args.variants)}
        if blends:
            print(f"\nblends on the {len(with_t)} rows the transformer has (MAE at tree weight w):")
            print(f"{'trees':28s} " + " ".join(f"w={w:.1f} " for w in WEIGHTS))
        for blend, members in blends.items():
            trees = with_t[members].mean(axis=1)
            maes = [np.abs((1 - w) * with_t["transformer"] + w * trees - with_t["true"]).mean() for w in WEIGHTS]
            print(f"{blend:28s} " + " ".join(f"{m:.4f}" for m in maes))
    corrections = [(None, None)] + (CORRECTION_GRID if saved is None else [])
    for corrected_blend in args.corrected_blends:
        members = corrected_blend.split("+")
        if set(members) <= set(args.variants) and saved is None:
            print(f"\n{corrected_blend} alone, then the series correction, on all {len(rows)} rows:")
            for scale, shrink in [(None, None), *CORRECTION_GRID]:
                mae = corrected_mae(list(range(len(parts))), parts, frames, own,
                                    lambda p: np.mean([p[m] for m in members], axis=0), scale, shrink)
                label = "no correction" if scale is None else f"{scale}, {shrink}"
                print(f"{label:28s} MAE {mae:.4f}")
            # how steady a difference between two blends is: the preset's correction, one outer fold at a time
            outers = sorted({outer for outer, _, _ in parts})
            per_outer = [corrected_mae([i for i, (o, _, _) in enumerate(parts) if o == outer], parts, frames, own,
                                       lambda p: np.mean([p[m] for m in members], axis=0), 0.25, 0.0)
                         for outer in outers]
            print(f"{'0.25, 0 by outer fold':28s} " + " ".join(f"{m:.4f}" for m in per_outer))
        if "transformer" in rows and set(members) <= set(args.variants):
            print(f"\n{corrected_blend} beside the transformer, then the series correction (MAE at tree weight w):")
            print(f"{'scale, shrink':28s} " + " ".join(f"w={w:.1f} " for w in WEIGHTS))
            chosen = [index for index, _ in neural]

            def mix(w: float) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
                return lambda p: (1 - w) * p["transformer"] + w * np.mean([p[m] for m in members], axis=0)
            for scale, shrink in corrections:
                maes = [corrected_mae(chosen, parts, frames, own, mix(w), scale, shrink) for w in WEIGHTS]
                label = "no correction" if scale is None else f"{scale}, {shrink}"
                print(f"{label:28s} " + " ".join(f"{m:.4f}" for m in maes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
