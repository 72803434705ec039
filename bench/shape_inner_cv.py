"""Inner cross-validation for the shape blend: which tree models, which transformer schedule, which weight.

The same inner folds as bench/size_inner_cv.py, on the shape task's rows: for each outer fold of the paper split
(seed 0), the 3 inner folds that `--model lgbm` uses for its own selection (2,468 scored training rows in all) give
out-of-fold probabilities of every tree variant (trained, as in the blend, on the inner training part's recipe rows
without the failed syntheses); each `--transformer NAME=JSON` (Config overrides over the cpu preset of best_cls.sh,
failed syntheses included) is trained on the first inner fold of each outer fold (825 scored rows, two processes).
Then the accuracy of each tree variant, of tree averages, of the trees' average moved towards the shape histogram
of the recipe's series siblings (correction.py's siblings and distance), and of each transformer beside the trees at
weight w. The held-out outer folds are never read. The inner-validation tables of docs/shape.md come from it:

    python bench/shape_inner_cv.py --transformer 'base={}' 'ep80={"epochs": 80}'   # measured size given, ~20 min
    python bench/shape_inner_cv.py --recipe_only --transformer none                 # trees only, recipe only, ~8 min
    python bench/shape_inner_cv.py --variants lgbm et lgbm_slow lgbm_pca16 et_pca16 lgbm_subs150 et_subs150 \
        --transformer none                                                          # tree variants, ~7 min
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanocrystal.baselines import featurizer, make_estimator, predict  # noqa: E402
from nanocrystal.config import ROOT, Config, resolve  # noqa: E402
from nanocrystal.correction import scaled_conditions, series_groups, siblings  # noqa: E402
from nanocrystal.descriptors import DescriptorStore, load_descriptors  # noqa: E402
from nanocrystal.recipes import load_dataset, series_keys  # noqa: E402
from nanocrystal.runs import FoldData, fit_neural_fold  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from size_inner_cv import inner_parts  # noqa: E402

# name -> (model, parameters over baselines.FIXED["shape"], featurizer overrides)
VARIANTS = {
    "lgbm": ("lgbm", dict(num_leaves=31), {}),
    "et": ("et", dict(max_features=1.0), {}),
    "rf": ("rf", dict(max_features=0.33), {}),
    "lgbm_product": ("lgbm", dict(num_leaves=31), {"use_product": True}),
    "et_product": ("et", dict(max_features=1.0), {"use_product": True}),
    "lgbm_200": ("lgbm", dict(num_leaves=31, n_estimators=200, learning_rate=0.05), {}),
    "et_300": ("et", dict(max_features=1.0, n_estimators=300), {}),
    # slower boosting with row sampling; wider descriptor PCAs; more substance columns (docs/shape.md)
    "lgbm_slow": ("lgbm", dict(num_leaves=31, n_estimators=300, learning_rate=0.03, min_child_samples=3,
                               subsample=0.8, subsample_freq=1), {}),
    "lgbm_pca16": ("lgbm", dict(num_leaves=31), {"descriptor_pca": 16}),
    "et_pca16": ("et", dict(max_features=1.0), {"descriptor_pca": 16}),
    "lgbm_subs150": ("lgbm", dict(num_leaves=31), {"substance_columns": 150}),
    "et_subs150": ("et", dict(max_features=1.0), {"substance_columns": 150}),
}
AVERAGES = [["lgbm", "et"], ["lgbm", "et", "rf"], ["lgbm_product", "et_product"], ["lgbm_200", "et"],
            ["lgbm", "et_300"], ["lgbm_slow", "et"], ["lgbm_pca16", "et_pca16"], ["lgbm_subs150", "et_subs150"],
            ["lgbm", "lgbm_slow", "et", "et_pca16"]]
WEIGHTS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
PRIOR_GRID = [(scale, shrink, a) for scale in (0.25, 0.5, 1.0) for shrink in (0.0, 1.0) for a in (0.1, 0.3, 0.5)]


def tree_probabilities(cfg: Config, store: DescriptorStore, part: FoldData, variants: list[str], n_shapes: int
                       ) -> dict[str, np.ndarray]:
    fit = part.train[~part.train["failed"].to_numpy()]  # the blend's trees never see a failed synthesis
    features, out = {}, {}
    for name in variants:
        model, params, overrides = VARIANTS[name]
        key = json.dumps(overrides, sort_keys=True)
        if key not in features:
            featurize = featurizer(replace(cfg, **overrides), store).fit(fit)
            features[key] = featurize.transform(fit), featurize.transform(part.valid)
        x_fit, x_scored = features[key]
        estimator = make_estimator(model, "shape", params, cfg.seed, 2).fit(x_fit, fit["Y3"].to_numpy(int))
        out[name] = predict("shape", estimator, x_scored, n_shapes)["shape"]
    return out


def sibling_histogram(part: FoldData, n_shapes: int, scale: float) -> np.ndarray:
    """Each scored row's weighted count of its series siblings' shapes in the fit rows (zeros: no sibling), weighted
    as in the size task's series correction."""
    fit = part.train[~part.train["failed"].to_numpy()]
    shapes = fit["Y3"].to_numpy(int)
    histogram = np.zeros((len(part.valid), n_shapes))
    groups = series_groups(series_keys(fit).to_numpy(object))
    for row, found, weights in siblings(groups, scaled_conditions(fit), part.valid, scale):
        np.add.at(histogram[row], shapes[found], weights)
    return histogram


def transformer_probabilities(args: tuple[Config, FoldData, int]) -> np.ndarray:
    cfg, part, n_shapes = args
    import torch

    torch.set_num_threads(1)
    prediction, _ = fit_neural_fold(cfg, part, load_descriptors(cfg.feats_path), n_shapes, logging.getLogger(__name__))
    return np.asarray(prediction["shape"])


def accuracy(probabilities: np.ndarray, truth: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == truth).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--recipe_only", action="store_true", help="no measured size as input")
    parser.add_argument("--transformer", nargs="+", default=["base={}"],
                        help="NAME=JSON Config overrides, one transformer each ('none': trees only)")
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    args = parser.parse_args(argv)
    transformers = {} if args.transformer == ["none"] else dict(t.split("=", 1) for t in args.transformer)
    if transformers and not {"lgbm", "et"} <= set(args.variants):
        parser.error("--transformer is blended with lgbm + et: keep both in --variants (or pass --transformer none)")
    base = dict(task="shape", data_dir=args.data_dir, use_product=False, size_as_input=not args.recipe_only,
                epochs=40, n_members=1, lgbm_seeds=1, tree_blend=0.0, workers=1,  # best_cls.sh's transformer
                calibration_folds=0)  # uncalibrated: calibration would refit it on 10 inner folds of each inner fold
    cfg = resolve("cpu", base)
    start = time.time()
    dataset = load_dataset(cfg.data_dir)
    parts = list(inner_parts(cfg, dataset))
    store = load_descriptors(cfg.feats_path)
    truth = [part.valid["Y3"].to_numpy(int) for _, _, part in parts]
    trees = []
    for outer, inner, part in parts:
        trees.append(tree_probabilities(cfg, store, part, args.variants, dataset.n_shapes))
        print(f"fold{outer} inner {inner}: trees done ({time.time() - start:.0f} s)", flush=True)
    y = np.concatenate(truth)
    everywhere = {name: np.concatenate([t[name] for t in trees]) for name in args.variants}
    print(f"\n{len(y)} inner-scored rows, {'recipe only' if args.recipe_only else 'measured size given'}")
    for name in args.variants:
        print(f"{name:28s} accuracy {accuracy(everywhere[name], y):.4f}")
    for members in AVERAGES:
        if set(members) <= set(args.variants):
            print(f"{' + '.join(members):28s} accuracy {accuracy(np.mean([everywhere[m] for m in members], 0), y):.4f}")
    if {"lgbm", "et"} <= set(args.variants):
        average = (everywhere["lgbm"] + everywhere["et"]) / 2
        print("\nlgbm + et moved towards the series siblings' shapes, p = (1 - a) p + a h / (sum h + shrink), rows "
              "with siblings only:")
        for scale in sorted({s for s, _, _ in PRIOR_GRID}):
            histogram = np.concatenate([sibling_histogram(part, dataset.n_shapes, scale) for _, _, part in parts])
            has = histogram.sum(axis=1) > 0
            print(f"scale {scale}: {has.mean():.3f} of the rows have siblings; siblings' majority "
                  f"{accuracy(histogram[has], y[has]):.4f}, trees {accuracy(average[has], y[has]):.4f} on them")
            for _, shrink, a in [g for g in PRIOR_GRID if g[0] == scale]:
                share = histogram[has] / (histogram[has].sum(axis=1, keepdims=True) + shrink)
                moved = average.copy()
                moved[has] = (1 - a) * average[has] + a * share
                print(f"  shrink {shrink}, a {a}: accuracy {accuracy(moved, y):.4f}")
    if not transformers:
        return 0
    first = [index for index, (_, inner, _) in enumerate(parts) if inner == 0]
    print(f"\ntransformer beside lgbm + et on the {sum(len(truth[i]) for i in first)} rows of the first inner "
          "folds (accuracy at tree weight w):")
    print(f"{'transformer':28s} " + " ".join(f"w={w:.1f} " for w in WEIGHTS))
    y_first = np.concatenate([truth[i] for i in first])
    trees_first = np.concatenate([(trees[i]["lgbm"] + trees[i]["et"]) / 2 for i in first])
    for name, overrides in transformers.items():
        cfg_t = resolve("cpu", {**base, **json.loads(overrides)})
        with ProcessPoolExecutor(2) as pool:  # one thread each
            neural = np.concatenate(list(pool.map(transformer_probabilities,
                                                  [(cfg_t, parts[i][2], dataset.n_shapes) for i in first])))
        accuracies = [accuracy((1 - w) * neural + w * trees_first, y_first) for w in WEIGHTS]
        print(f"{name:28s} " + " ".join(f"{a:.4f}" for a in accuracies) + f"   ({time.time() - start:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
