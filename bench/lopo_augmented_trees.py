"""Does the reaction-intermediate augmentation help LightGBM on leave-one-product-out? (a check for best_new.sh)

`train.py --model lgbm` refuses augmented rows (its paper-split inner CV could not keep a row and its copies apart);
under leave-one-product-out that is no obstacle, since a generated row keeps its source's product. This bench fits
best_new.sh's model (LightGBM with the product descriptor: log size, Huber 0.05, the cpu preset's 3 seeds; weak rows
at a fixed weight 0.3, where its inner CV picked 0.3 or 1 on the eight proxy products of bench/lopo_proxy.sh, four
times each) on each held-out product's training rows, with the fold's augmented rows added at each weight w
(0 = none); the featurizer's PCAs see the recipe rows only. Use it on products other than the four reported ones,
e.g. on bench/lopo_proxy.sh's table (docs/lopo.md, augmentation):

    python augment.py --data_dir runs/lopo-proxy/data --object_name Au Pd PbS InP --out runs/aug-proxy
    python bench/lopo_augmented_trees.py --data_dir runs/lopo-proxy/data --augmented runs/aug-proxy Au Pd PbS InP
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanocrystal.baselines import featurizer, loss_params, make_estimator, model_seeds, predict_mean  # noqa: E402
from nanocrystal.config import resolve  # noqa: E402
from nanocrystal.descriptors import load_descriptors  # noqa: E402
from nanocrystal.recipes import load_dataset  # noqa: E402
from nanocrystal.runs import fold_data  # noqa: E402
from nanocrystal.splits import combined_table, run_folds  # noqa: E402

WEAK_WEIGHT = 0.3
AUGMENTED_WEIGHTS = (0.0, 0.03, 0.1, 0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("products", nargs="+")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--augmented", required=True, help="augment.py's folder for these products")
    args = parser.parse_args(argv)
    cfg = resolve("cpu", dict(task="size", model="lgbm", use_product=True, object_name=args.products,
                              data_dir=args.data_dir, augmented=args.augmented, threads=2))
    dataset = load_dataset(cfg.data_dir)
    table = combined_table(dataset)
    store = load_descriptors(cfg.feats_path)
    print(f"{'product':12s} {'rows':>5s} {'augmented':>9s} " + " ".join(f"{f'w={w}':>8s}" for w in AUGMENTED_WEIGHTS))
    maes = []
    for fold in run_folds(cfg, table):
        data = fold_data(cfg, table, fold, dataset.n_shapes)
        own = ~data.train_augmented
        features = featurizer(cfg, store).fit(data.train[own])
        x_train, x_valid = features.transform(data.train), features.transform(data.valid)
        y_train, y_valid = data.train["Y1"].to_numpy(float), data.valid["Y1"].to_numpy(float)
        row = []
        for weight in AUGMENTED_WEIGHTS:
            keep = own | (weight > 0)
            weights = np.where(data.train_augmented, weight, np.where(data.train_weak, WEAK_WEIGHT, 1.0))[keep]
            estimators = [make_estimator("lgbm", "size", loss_params(cfg), seed, cfg.threads)
                          .fit(x_train[keep], y_train[keep], sample_weight=weights) for seed in model_seeds(cfg)]
            size_nm = predict_mean("size", estimators, x_valid, dataset.n_shapes)["size"]
            row.append(float(np.mean(np.abs(size_nm - y_valid))))
        maes.append(row)
        print(f"{fold.name:12s} {len(data.valid):5d} {int(data.train_augmented.sum()):9d} "
              + " ".join(f"{m:8.4f}" for m in row), flush=True)
    print(f"{'mean':12s} {'':5s} {'':9s} " + " ".join(f"{m:8.4f}" for m in pd.DataFrame(maes).mean()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
