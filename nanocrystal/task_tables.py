"""What scripts/best_cls.sh and scripts/best_new.sh print: run folders beside the paper's figures.

    python -m nanocrystal.task_tables shape RUN...   # shape runs side by side (nanocrystal.report's shape table),
                                                     # then each run's labelled val-selected figure (--eval_every)
    python -m nanocrystal.task_tables lopo RUN       # a leave-one-product-out size run, one row per product
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from .report import PAPER_LOPO_MAE, ReportError, Run, load_run, shape_table


def product_table(run: Run) -> pd.DataFrame:
    """One row per held-out product: validation rows, MAE, MAPE, R² (metrics.json per_fold), the paper's
    pretrain-finetune MAE and our MAE minus it (negative = better than the paper)."""
    if run.metrics["split"] != "lopo" or run.metrics["task"] != "size":
        raise ReportError(f"{run.path}: a {run.metrics['task']} run on the {run.metrics['split']} split, "
                          "not a leave-one-product-out size run")
    n_rows = pd.read_csv(run.path / "oof_predictions.csv", usecols=["fold"])["fold"].value_counts()
    table = pd.DataFrame(
        [{"product": fold["fold"], "n": int(n_rows.get(fold["fold"], 0)), "mae": fold["mae"],
          "mape": fold["mape"], "r2": fold["r2"], "paper_mae": PAPER_LOPO_MAE.get(fold["fold"], np.nan)}
         for fold in run.metrics["per_fold"]]).set_index("product")
    table["mae_minus_paper"] = table["mae"] - table["paper_mae"]
    return table


def val_selected_line(run: Run) -> str:
    values = ", ".join(f"{k} {v:.4f}" for k, v in run.metrics["val_selected"]["mean"].items())
    return (f"{run.path}: val-selected, upstream style (the transformer alone, each fold's best checkpoint chosen on "
            f"its own held-out rows, as the paper's 0.893; not the result): {values}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanocrystal.task_tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=["shape", "lopo"])
    parser.add_argument("runs", nargs="+", metavar="RUN")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(path) for path in args.runs]
        if args.table == "shape":
            print(shape_table(runs))
            for run in runs:
                if "val_selected" in run.metrics:  # --eval_every: upstream's kind of figure, beside the paper's
                    print(val_selected_line(run))
        else:
            for run in runs:
                print(product_table(run).to_string(float_format=lambda x: f"{x:.4f}", na_rep="-"))
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
