"""Leave-one-product-out over every product with at least --min_recipes evaluation recipes (sized, 0 < size <= 20 nm,
any particle count: the validation rows of a leave-one-product-out fold), one fold per product, on the Ray backend.
The model is scripts/best_new.sh's: the cpu preset's LightGBM (log size, mean of 3 seeds; one of its three candidates
and the weak-row weight by an inner CV that leaves out whole training products) with the product descriptor, and its
calibrated 90% intervals.
Writes one table (per product: validation rows, MAE, MAPE, R², interval coverage and width) as CSV and Markdown, and a
figure of MAE and coverage by product, into --out beside the run folder; prints the wall time. It reports and chooses
nothing: every choice of the model was made without these products' held-out rows (docs/lopo.md).

    python bench/lopo_all.py [--out runs/lopo-all] [--min_recipes 20] [train.py flags, e.g. --ray_address HEAD:6379]

On a 2-core machine: 11-22 min (32 products; --workers 2 --threads 1, the cpu preset's). --resume continues an
interrupted run (its finished products are kept).
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanocrystal.cli import guarded  # noqa: E402
from nanocrystal.config import config_from_args  # noqa: E402
from nanocrystal.config import ROOT  # noqa: E402
from nanocrystal.files import write_text  # noqa: E402
from nanocrystal.recipes import PRODUCT_NAME, has_size, load_dataset  # noqa: E402
from nanocrystal.report import _markdown, _number, load_run  # noqa: E402
from nanocrystal.runs import run_experiment  # noqa: E402
from nanocrystal.splits import combined_table  # noqa: E402
from nanocrystal.task_tables import product_table  # noqa: E402

MODEL_FLAGS = ["--task", "size", "--preset", "new_product"]  # scripts/best_new.sh's model


def products(data_dir: str, min_recipes: int) -> pd.Series:
    """Evaluation recipes per product (those with at least `min_recipes`), most first."""
    table = combined_table(load_dataset(data_dir))
    evaluated = table[has_size(table) & ~table["failed"]]
    counts = evaluated[PRODUCT_NAME].value_counts()
    return counts[counts >= min_recipes]


def figure(table: pd.DataFrame, path: Path, confidence: float) -> None:
    fig, (mae_ax, coverage_ax) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    x = np.arange(len(table))
    mae_ax.bar(x, table["mae"], color="tab:blue")
    mae_ax.set_ylabel("MAE (nm)")
    mae_ax.set_title(f"Leave-one-product-out, LightGBM with the product descriptor: {len(table)} products")
    coverage_ax.bar(x, table["coverage"], color="tab:green")
    coverage_ax.axhline(confidence, color="black", linestyle="--", linewidth=1, label=f"target {confidence:.0%}")
    coverage_ax.set_ylabel("interval coverage")
    coverage_ax.set_ylim(0, 1.05)
    coverage_ax.legend(loc="lower right")
    coverage_ax.set_xticks(x, [f"{p} ({n})" for p, n in zip(table.index, table["n"])], rotation=70, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="", help="folder for the run and the table (default runs/lopo-all-<time>)")
    parser.add_argument("--min_recipes", type=int, default=20)
    args, train_flags = parser.parse_known_args(argv)
    start = time.time()
    out = Path(args.out) if args.out else ROOT / "runs" / f"lopo-all-{datetime.now():%Y%m%d-%H%M%S}"
    base = config_from_args(MODEL_FLAGS + train_flags)
    chosen = products(base.data_dir, args.min_recipes)
    flags = MODEL_FLAGS + ["--backend", "ray", "--object_name", *chosen.index, "--save_path", str(out / "run")]
    cfg = config_from_args(flags + train_flags)  # the user's flags win (--backend local, --ray_address, --resume)
    print(f"{len(chosen)} products with >= {args.min_recipes} evaluation recipes ({chosen.sum()} recipes); "
          f"backend {cfg.backend}{' at ' + cfg.ray_address if cfg.ray_address else ''}", flush=True)
    run_dir = run_experiment(cfg, command="python bench/lopo_all.py " + " ".join(argv))
    table = product_table(load_run(run_dir)).drop(columns=["paper_mae", "mae_minus_paper"])
    table = table.sort_values("mae")
    write_text(out / "lopo_all.csv", table.to_csv(float_format="%.4f"))
    rows = [[product, str(n), *(_number(v) for v in values)]
            for product, n, *values in table.itertuples()]
    write_text(out / "lopo_all.md", _markdown(["product", *table.columns], rows) + "\n")
    figure(table, out / "lopo_all.png", cfg.confidence)
    print(table.to_string(float_format=lambda x: f"{x:.4f}"))
    print(f"mean over {len(table)} products: MAE {table['mae'].mean():.4f}, R² {table['r2'].mean():.4f}, "
          f"coverage {table['coverage'].mean():.4f}; rows pooled: MAE "
          f"{np.average(table['mae'], weights=table['n']):.4f}")
    print(f"wrote {out / 'lopo_all.csv'}, lopo_all.md, lopo_all.png; run folder {run_dir}; "
          f"wall time {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(lambda: main(sys.argv[1:])))
