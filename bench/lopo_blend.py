"""The leave-one-product-out blend table of bench/lopo_proxy.sh: MAE per held-out product of each run folder's
out-of-fold predictions, and of each transformer beside the mean of LightGBM and extra trees (both without the product
descriptor, as a --tree_blend run with --no-use_product fits them) at tree weight w.

    python bench/lopo_blend.py runs/lopo-proxy
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

RUNS = ["transformer", "transformer-pretrain", "lgbm", "lgbm-product", "et", "et-product"]
WEIGHTS = (0.0, 0.3, 0.5, 0.7, 0.8, 1.0)


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    frames = [pd.read_csv(folder / name / "oof_predictions.csv", usecols=["ID", "fold", "true", "pred"])
              .rename(columns={"pred": name}) for name in RUNS if (folder / name / "oof_predictions.csv").is_file()]
    table = frames[0]
    for frame in frames[1:]:
        table = table.merge(frame, on=["ID", "fold", "true"], validate="one_to_one")
    products = list(dict.fromkeys(table["fold"]))

    def maes(pred: pd.Series) -> list[float]:
        errors = (pred - table["true"]).abs().groupby(table["fold"]).mean()
        return [errors[p] for p in products] + [errors.mean()]

    print(f"MAE (nm) per held-out product, and their mean:\n{'':38s}" + " ".join(f"{p:>10s}" for p in products)
          + f" {'mean':>10s}")
    for name in [n for n in RUNS if n in table]:
        print(f"{name:38s}" + " ".join(f"{m:10.4f}" for m in maes(table[name])))
    if {"lgbm", "et"} <= set(table):
        trees = (table["lgbm"] + table["et"]) / 2
        print(f"{'lgbm + et':38s}" + " ".join(f"{m:10.4f}" for m in maes(trees)))
        for name in [n for n in ("transformer", "transformer-pretrain") if n in table]:
            for w in WEIGHTS[1:-1]:
                label = f"{name} + trees at w={w}"
                print(f"{label:38s}" + " ".join(f"{m:10.4f}" for m in maes((1 - w) * table[name] + w * trees)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
