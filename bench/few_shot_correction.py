"""Few-shot on a new product: ways to use its first k recipes, measured on leave-one-product-out folds with --shots.

For each fold (a held-out product, k of its recipes in training, a draw), the run's tree model (best_new.sh's
LightGBM with the product descriptor, hyper-parameters by the pipeline's inner CV) is fitted as the pipeline fits it
(`retrained`, B), refitted with the same choice without the k recipes (`zero-shot`, A, which predicts them out of
sample), and with the k recipes weighted up (`weight W`: --shot_weight W, refitted with B's choice). Each is scored
on the product's other recipes as it is and corrected by the k recipes' residuals: a level for the product (their
summed log residual / (k + shrink)), then correction.py's series correction of what the level leaves (the preset's
scale and shrink). `A res` takes the residuals of the model without the k recipes (out of sample), `own res` those
of the scored model itself.
Chooses nothing by itself: run it on the proxy table (bench/lopo_proxy.sh's data: Au, Pd, PbS, InP) to choose.

    python bench/few_shot_correction.py --data_dir runs/lopo-proxy/data --object_name Au Pd PbS InP --shots 1 3 5 10
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from nanocrystal.baselines import fit_chosen, fit_selected
from nanocrystal.config import Config, resolve
from nanocrystal.correction import SeriesCorrection
from nanocrystal.recipes import PRODUCT_NAME, load_dataset
from nanocrystal.runs import fold_data
from nanocrystal.splits import combined_table, run_folds
from nanocrystal.substances import run_store


def corrected(pred: np.ndarray, shots: pd.DataFrame, shot_pred: np.ndarray, valid: pd.DataFrame, shrink: float,
              cfg: Config) -> np.ndarray:
    residual = np.log(shots["Y1"].to_numpy(float) / shot_pred)
    level = np.exp(residual.sum() / (len(residual) + shrink))
    series = SeriesCorrection.fit(shots, shot_pred * level, cfg.correction_scale, cfg.correction_shrink)
    return pred * level * series.factors(valid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--object_name", nargs="+", required=True)
    parser.add_argument("--shots", type=int, nargs="+", default=[5])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--weights", type=float, nargs="+", default=[10.0])
    parser.add_argument("--shrink", type=float, nargs="+", default=[1.0])
    args = parser.parse_args()
    base = resolve("cpu", dict(task="size", model="lgbm", use_product=True, data_dir=args.data_dir,
                               object_name=args.object_name, calibration_folds=0, shot_draws=args.draws))
    dataset = load_dataset(args.data_dir)
    table = combined_table(dataset)
    store = run_store(base.descriptors, base.feats_path)
    rows = []
    for k in args.shots:
        cfg = replace(base, shots=k)
        for fold in run_folds(cfg, table):
            start = time.time()
            data = fold_data(cfg, table, fold, dataset.n_shapes)
            product = fold.name.split("-")[0]
            shots = (data.train[PRODUCT_NAME] == product).to_numpy()
            true = data.valid["Y1"].to_numpy(float)
            with threadpool_limits(limits=2):
                retrained = fit_selected(cfg, data, store, dataset.n_shapes)
                weak = np.asarray(data.train_weak, bool)
                zero = fit_chosen(cfg, data.train[~shots], weak[~shots], store, retrained.candidate)
                models = {"zero-shot": lambda t: zero.predict(cfg, t, 0)["size"],
                          "retrained": lambda t: retrained.predict(cfg, t, 0)["size"]}
                for weight in args.weights:  # the pipeline's --shot_weight, with the choice made without it
                    weighted_cfg = replace(cfg, shot_weight=weight)
                    tree = fit_chosen(weighted_cfg, data.train, weak, store, retrained.candidate, shots=shots)
                    models[f"weight {weight:g}"] = lambda t, tree=tree, c=weighted_cfg: tree.predict(c, t, 0)["size"]
                shot_rows = data.train[shots]
                zero_on_shots = models["zero-shot"](shot_rows)
                row = {"product": product, "k": k, "draw": fold.name}
                for name, model in models.items():
                    pred = model(data.valid)
                    row[name] = np.abs(true - pred).mean()
                    for shrink in args.shrink:
                        row[f"{name} + A res {shrink:g}"] = np.abs(
                            true - corrected(pred, shot_rows, zero_on_shots, data.valid, shrink, cfg)).mean()
                        if name != "zero-shot":
                            row[f"{name} + own res {shrink:g}"] = np.abs(
                                true - corrected(pred, shot_rows, model(shot_rows), data.valid, shrink, cfg)).mean()
            rows.append(row)
            print(f"{fold.name}: " + ", ".join(f"{key} {value:.3f}" for key, value in row.items()
                                                 if isinstance(value, float)) + f" ({time.time() - start:.0f} s)",
                  flush=True)
    frame = pd.DataFrame(rows).drop(columns="draw").groupby(["product", "k"], sort=False).mean()
    means = frame.groupby(level="k").mean()
    means.index = pd.MultiIndex.from_product([["mean"], means.index], names=["product", "k"])
    frame = pd.concat([frame, means])
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(frame.round(3).to_string())
        print("\nreduction against zero-shot on the same rows (mean over products):")
        print((1 - means.div(means["zero-shot"], axis=0)).round(3).to_string())


if __name__ == "__main__":
    main()
