"""How far a per-product offset could take the few-shot curve: a ceiling, not a choice.

For each held-out product of a leave-one-product-out run folder (`bash scripts/best_new.sh`), the zero-shot
predictions are moved by a constant factor exp(c) on the log scale:
- `oracle`: c = the median log residual over all of the product's recipes, the constant with the least absolute log
  error there (it sees the recipes it scores: a bound on what a level shift can do, and no result);
- `k shots`: c = sum of the log residuals of k random recipes / (k + shrink), scored on the product's other recipes
  (draws of the k recipes averaged), beside the unmoved predictions' MAE on the same recipes (`mae others`).
If even the oracle offset cuts little of a product's MAE, its error is spread within the product rather than a shift
of the whole product, and the k recipes have to teach the model more than a level.

    python bench/few_shot_offset.py runs/size-lopo-20261203-192607 --shots 5 --draws 200
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a leave-one-product-out run folder (oof_predictions.csv)")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--shrink", type=float, nargs="+", default=[0.0, 1.0, 2.0, 5.0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = pd.read_csv(args.run / "oof_predictions.csv", usecols=["fold", "true", "pred"])
    rng = np.random.default_rng(args.seed)
    rows = []
    for product, group in table.groupby("fold", sort=False):
        true, pred = group["true"].to_numpy(), group["pred"].to_numpy()
        residual = np.log(true / pred)
        row = {"product": product, "n": float(len(group)), "mae": np.abs(true - pred).mean(),
               "oracle": np.abs(true - pred * np.exp(np.median(residual))).mean()}
        draws = [rng.permutation(len(group)) for _ in range(args.draws)]
        row["mae others"] = np.mean([np.abs(true[d[args.shots:]] - pred[d[args.shots:]]).mean()
                                                           for d in draws])
        for shrink in args.shrink:
            row[f"shrink {shrink:g}"] = np.mean([
                np.abs(true[d[args.shots:]]
                       - pred[d[args.shots:]] * np.exp(residual[d[:args.shots]].sum() / (args.shots + shrink))).mean()
                for d in draws])
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("product")
    frame.loc["mean"] = frame.mean()
    print(f"{args.run}: MAE (nm) of the zero-shot predictions, moved by an offset; {args.shots} shots, "
          f"{args.draws} draws")
    print(frame.round(3).to_string())


if __name__ == "__main__":
    main()
