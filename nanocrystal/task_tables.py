"""What the scripts/best_*.sh scripts print: run folders beside the paper's figures.

    python -m nanocrystal.task_tables summary RUN    # a run's mean scores, then its calibration: coverage overall and
                                                     # by series, mean width beside the plain baseline (size), or set
                                                     # coverage and mean set size (shape)
    python -m nanocrystal.task_tables shape RUN...   # shape runs side by side (nanocrystal.report's shape table),
                                                     # then each run's labelled val-selected figure (--eval_every)
    python -m nanocrystal.task_tables lopo RUN       # a leave-one-product-out size run, one row per product, with
                                                     # its intervals' coverage and width
    python -m nanocrystal.task_tables seeds RUN...   # runs of one config on several split seeds: each seed's scores,
                                                     # their mean and standard deviation
    python -m nanocrystal.task_tables shots RUN0 RUNk... [--plot PNG]
                                                     # few-shot: leave-one-product-out runs with --shots k (RUN0:
                                                     # k = 0), MAE per product and k, against k = 0 on the same rows
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
          "mape": fold["mape"], "r2": fold["r2"], "paper_mae": PAPER_LOPO_MAE.get(fold["fold"], np.nan),
          **{name: fold[name] for name in ("coverage", "mean_width_nm") if name in fold}}
         for fold in run.metrics["per_fold"]]).set_index("product")
    table.insert(table.columns.get_loc("paper_mae") + 1, "mae_minus_paper", table["mae"] - table["paper_mae"])
    return table


def seeds_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run (its split seed) with its fold-mean scores, then the mean and the standard deviation (ddof 1)
    over the seeds. The runs must differ in the seed only."""
    def comparable(run: Run) -> dict:
        return {k: v for k, v in run.config.items() if k not in ("seed", "save_path", "resume", "workers", "threads")}
    if any(comparable(run) != comparable(runs[0]) for run in runs):
        raise ReportError("seeds needs runs of one config that differ in --seed only")
    table = pd.DataFrame([{"seed": run.metrics["seed"], **run.metrics["mean"]} for run in runs]).set_index("seed")
    table.index = table.index.astype(str)
    return pd.concat([table, table.agg(["mean", "std"])])


def shots_table(runs: list[Run]) -> pd.DataFrame:
    """Few-shot learning curve: for each product and k (the run's --shots), the MAE of its recipes that stay held out,
    mean and standard deviation over the draws, beside the zero-shot run's MAE on the same recipes (`zero_shot_mae`)
    and the reduction 1 - mae / zero_shot_mae. k = 0 rows are the zero-shot run itself (all of the product's recipes).
    """
    zero = [run for run in runs if not run.config.get("shots", 0)]
    if len(zero) != 1 or any(run.metrics["split"] != "lopo" for run in runs):
        raise ReportError("shots needs leave-one-product-out runs, exactly one of them without --shots (k = 0)")
    zero_oof = pd.read_csv(zero[0].path / "oof_predictions.csv").set_index("ID")
    rows = []
    for run in runs:
        shots = run.config.get("shots", 0)
        oof = pd.read_csv(run.path / "oof_predictions.csv")
        for fold, scored in oof.groupby("fold", sort=False):
            product = fold.rsplit(f"-{shots}shot-", 1)[0] if shots else fold
            same = zero_oof.loc[scored["ID"]]
            same = same[same["fold"] == product]  # the zero-shot prediction of these very recipes
            rows.append({"product": product, "shots": shots, "mae": np.abs(scored["true"] - scored["pred"]).mean(),
                         "zero_shot_mae": np.abs(same["true"] - same["pred"]).mean(), "rows": len(scored)})
    draws = pd.DataFrame(rows)
    table = draws.groupby(["product", "shots"], sort=False).agg(
        draws=("mae", "size"), rows=("rows", "mean"), mae=("mae", "mean"), mae_sd=("mae", "std"),
        zero_shot_mae=("zero_shot_mae", "mean")).sort_index(level=["product", "shots"])
    table["reduction"] = 1 - table["mae"] / table["zero_shot_mae"]
    return table


def shots_plot(table: pd.DataFrame, path: Path) -> None:
    """MAE against the number of the product's recipes in training, one line per product and their mean."""
    from .report import plt, save_figure

    figure, axis = plt.subplots(figsize=(6, 4.2))
    for product, curve in table.groupby(level="product", sort=False):
        shots = curve.index.get_level_values("shots")
        axis.errorbar(shots, curve["mae"], yerr=curve["mae_sd"].fillna(0), marker="o", capsize=3, label=product)
    mean = table.groupby(level="shots")["mae"].mean()
    axis.plot(mean.index, mean.to_numpy(), "k--", linewidth=2, label="mean over products")
    axis.set(xlabel="recipes of the product in training (k)", ylabel="MAE of its other recipes (nm)",
             title="new products: few-shot learning curve")
    axis.legend(fontsize=8)
    save_figure(figure, path)


def summary_lines(run: Run) -> list[str]:
    """The run's mean scores and, when calibrated, its coverage (overall, by series) and width beside the baseline."""
    lines = [f"{run.path}: " + ", ".join(f"{k} {v:.4f}" for k, v in run.metrics["mean"].items())]
    u = run.metrics.get("uncertainty")
    if u is None:
        return lines
    if run.metrics["task"] == "shape":
        return lines + [f"  {u['confidence']:.0%} prediction sets: coverage {u['set_coverage']:.3f}, mean set size "
                        f"{u['mean_set_size']:.2f} shapes ({u['rows']} out-of-fold rows)"]
    lines.append(f"  {u['confidence']:.0%} intervals over {u['rows']} out-of-fold rows: coverage {u['coverage']:.3f}, "
                 f"mean width {u['mean_width_nm']:.2f} nm")
    for name in ("seen_series", "new_series"):
        if u[name]["rows"]:
            lines.append(f"    {name.replace('_', ' ')} ({u[name]['rows']} rows): coverage "
                         f"{u[name]['coverage']:.3f}, mean width {u[name]['mean_width_nm']:.2f} nm")
    base = u["baseline"]
    lines.append(f"  plain baseline (split conformal on |log residual|, seen/new series only; same calibration rows): "
                 f"coverage {base['coverage']:.3f}, mean width {base['mean_width_nm']:.2f} nm")
    return lines


def val_selected_line(run: Run) -> str:
    values = ", ".join(f"{k} {v:.4f}" for k, v in run.metrics["val_selected"]["mean"].items())
    return (f"{run.path}: val-selected, upstream style (the transformer alone, each fold's best checkpoint chosen on "
            f"its own held-out rows, as the paper's 0.893; not the result): {values}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanocrystal.task_tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=["summary", "shape", "lopo", "seeds", "shots"])
    parser.add_argument("runs", nargs="+", metavar="RUN")
    parser.add_argument("--plot", default=None, help="shots: also draw the learning curve into this PNG")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(path) for path in args.runs]
        if args.table == "summary":
            for run in runs:
                print("\n".join(summary_lines(run)))
        elif args.table == "shape":
            print(shape_table(runs))
            for run in runs:
                if "val_selected" in run.metrics:  # --eval_every: upstream's kind of figure, beside the paper's
                    print(val_selected_line(run))
        elif args.table == "seeds":
            print(seeds_table(runs).to_string(float_format=lambda x: f"{x:.4f}"))
        elif args.table == "shots":
            table = shots_table(runs)
            print(table.to_string(float_format=lambda x: f"{x:.4f}", na_rep="-"))
            mean = table.groupby(level="shots")[["mae", "zero_shot_mae"]].mean()
            print("mean over products: " + ", ".join(
                f"k={k}: {row.mae:.4f} (zero-shot on the same recipes {row.zero_shot_mae:.4f})"
                for k, row in mean.iterrows()))
            if args.plot:
                shots_plot(table, Path(args.plot))
                print(f"wrote {args.plot}")
        else:
            for run in runs:
                print(product_table(run).to_string(float_format=lambda x: f"{x:.4f}", na_rep="-"))
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
