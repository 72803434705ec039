"""The leave-one-product-out blend table of bench/lopo_proxy.sh: MAE per held-out product of each run folder's
out-of-fold predictions, and of each transformer beside the mean of LightGBM and extra trees (both without the product
descriptor, as a --tree_blend run with --no-use_product fits them) at tree weight w. A last, labelled row picks per
product the row with the least MAE on that product itself (upstream-style selection, for comparison only).

    python bench/lopo_blend.py runs/lopo-proxy
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

RUNS = ["transformer", "transformer-pretrain", "lgbm", "lgbm-product", "et", "et-product", "lgbm-product-chemistry"]
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

    rows = {name: maes(table[name]) for name in RUNS if name in table}
    if {"lgbm", "et"} <= set(table):
        trees = (table["lgbm"] + table["et"]) / 2
        rows["lgbm + et"] = maes(trees)
        for name in [n for n in ("transformer", "transformer-pretrain") if n in table]:
            for w in WEIGHTS[1:-1]:
                rows[f"{name} + trees at w={w}"] = maes((1 - w) * table[name] + w * trees)
    print(f"MAE (nm) per held-out product, and their mean:\n{'':38s}" + " ".join(f"{p:>10s}" for p in products)
          + f" {'mean':>10s}")
    for label, values in rows.items():
        print(f"{label:38s}" + " ".join(f"{m:10.4f}" for m in values))
    # upstream's leave-one-product-out figures were chosen on the held-out product: the same choice among these rows,
    # printed for an even comparison with them and never as a result
    chosen = [min(values[i] for values in rows.values()) for i in range(len(products))]
    print(f"{'chosen on the held-out product *':38s}" + " ".join(f"{m:10.4f}" for m in chosen)
          + f" {sum(chosen) / len(chosen):10.4f}")
    print("  chosen rows: " + ", ".join(f"{p}: {min(rows, key=lambda r: rows[r][i])}" for i, p in enumerate(products)))
    print("* upstream-style: per product, the row above with the least MAE on that product itself, as the paper's "
          "leave-one-product-out figures were chosen; not a result")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
