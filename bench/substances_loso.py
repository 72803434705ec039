"""Leave-one-substance-out: does an imputed vector stand in for a substance the table lacks? (docs/substances.md)

For each of the N reagents (`--substances`, default 30; products excluded) in most of the recipes a finished size run
on the table scored (its held-out rows: 0 < size <= 20 nm, >= 300 particles counted), and each of its folds, the
fold's held-out rows that use the substance are predicted by that fold's models (transformer members, trees, series
correction: the run's own prediction) five ways:

    trained   as the run was trained (the substance under its own name)
    zeros     the substance renamed to a name the run never saw, with a vector of zeros
    imputed   renamed, with the vector the imputation regression gives it when fitted without it
    true      renamed, with its own table vector
    unknown   renamed, with no vector (today's --allow-unknown: the empty token)

Renaming makes the substance new to the models (no learned offset, no per-name amount column of the trees, a new
recipe series) in every condition but `trained`; the renamed conditions then differ only in the vector. The gap closed
is (MAE zeros - MAE imputed) / (MAE zeros - MAE true) over the substance's rows. For `trained` and `imputed` the 90 %
interval's coverage is also counted, the latter with and without the widening for a new substance (its shifts come
from the fold's training rows only). Nothing is fitted on held-out labels. As predict does, the run folder gets its
caches (applicability.npz, substance_shifts.npz): use a copy of a run that others read.

    python bench/substances_loso.py --run runs/size-final --out runs/substances-loso.csv
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanocrystal.descriptors import load_descriptors  # noqa: E402
from nanocrystal.predict import (NEW_SUFFIX, Predictor, extend_run, fold_outputs, load_run, load_shifts,  # noqa: E402
                                 training_positions)
from nanocrystal.recipes import NAME_COLUMNS, SHAPES_FILE, load_dataset, load_shapes  # noqa: E402
from nanocrystal.splits import combined_table, run_folds  # noqa: E402
from nanocrystal.substances import (IMPUTATION_PROVIDERS, fit_imputer, package_substances,  # noqa: E402
                                    provider_vectors, rename_substance)

CONFIDENCE = 0.9
CONDITIONS = ("trained", "zeros", "imputed", "true", "unknown")


def frequent_reagents(scored: pd.DataFrame, count: int) -> list[str]:
    """The reagents in most of the run's scored (held-out) recipes: only those rows carry a size MAE."""
    names = pd.Series(scored[list(NAME_COLUMNS)].to_numpy().ravel())
    return [n for n in names.value_counts().index if n != "PlaceHolder"][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished size run on the table (fold checkpoints)")
    parser.add_argument("--substances", type=int, default=30)
    parser.add_argument("--out", required=True, help="CSV: one row per substance and fold")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    run = load_run(args.run)
    shapes = load_shapes(Path(run.cfg.data_dir) / SHAPES_FILE)
    run.shifts = load_shifts(run)
    dataset = load_dataset(run.cfg.data_dir)
    table = combined_table(dataset)
    folds = {f.name: f for f in run_folds(run.cfg, table)}
    assert set(training_positions(run.cfg, table)) >= {f.name for f in run.folds}
    store = load_descriptors(run.cfg.feats_path)
    described = package_substances()
    records = []
    scored = table.iloc[np.concatenate([folds[f.name].valid for f in run.folds])]
    for name in frequent_reagents(scored, args.substances):
        new = name + NEW_SUFFIX
        features = provider_vectors(IMPUTATION_PROVIDERS, described[described["name"] == name])
        imputed = fit_imputer(str(run.cfg.feats_path), (name,)).predict(features)[0]
        vectors = {"zeros": np.zeros(store.dim, np.float32), "imputed": imputed, "true": store.get(name)}
        for fold in run.folds:
            valid = table.iloc[folds[fold.name].valid]
            rows = valid[(valid[list(NAME_COLUMNS)] == name).any(axis=1)].reset_index(drop=True)
            if rows.empty:
                continue
            renamed = rename_substance(rows, name, new)
            single = replace(run, folds=[fold])
            record = {"substance": name, "fold": fold.name, "rows": len(rows),
                      "cosine_imputed_true": float(imputed @ vectors["true"] / (np.linalg.norm(imputed)
                                                                                * np.linalg.norm(vectors["true"])))}
            sizes = {"trained": _size(run, fold, rows), "unknown": _size(run, fold, renamed)}
            for condition, vector in vectors.items():
                (moved,) = extend_run(single, {new: vector}).folds
                sizes[condition] = _size(run, moved, renamed)
            true_nm = rows["Y1"].to_numpy(float)
            for condition in CONDITIONS:
                record[f"abs_error_{condition}"] = float(np.abs(sizes[condition] - true_nm).sum())
            # intervals: the run as trained, the imputed substance without and with the widening
            for label, predictor in (("trained", Predictor(single, None, shapes)),
                                     ("imputed_plain", Predictor(extend_run(single, {new: imputed}), None, shapes)),
                                     ("imputed_widened", Predictor(extend_run(single, {new: imputed}), None, shapes,
                                                                   frozenset({new})))):
                out = predictor.predict(rows if label == "trained" else renamed, CONFIDENCE)
                inside = (true_nm >= out["size_lo"].to_numpy()) & (true_nm <= out["size_hi"].to_numpy())
                record[f"covered_{label}"] = int(inside.sum())
                record[f"width_{label}"] = float((out["size_hi"] - out["size_lo"]).sum())
            records.append(record)
        print(f"{name}: {sum(r['rows'] for r in records if r['substance'] == name)} rows "
              f"({time.time() - start:.0f} s)", flush=True)
    frame = pd.DataFrame(records)
    frame.to_csv(args.out, index=False)
    summarise(frame, run.shifts)
    print(f"wall {time.time() - start:.0f} s")


def _size(run, fold, rows: pd.DataFrame) -> np.ndarray:
    return np.mean([p["size"] for p in fold_outputs(run.cfg, fold, rows)], axis=0)


def summarise(frame: pd.DataFrame, shifts: np.ndarray) -> None:
    by = frame.groupby("substance", sort=False).sum(numeric_only=True)
    mae = pd.DataFrame({c: by[f"abs_error_{c}"] / by["rows"] for c in CONDITIONS})
    mae.insert(0, "rows", by["rows"])
    mae["gap_closed"] = (mae["zeros"] - mae["imputed"]) / (mae["zeros"] - mae["true"])
    mae["cosine"] = frame.groupby("substance", sort=False)["cosine_imputed_true"].first()
    pd.set_option("display.width", 200)
    print(mae.round(3).to_string())
    pooled = {c: by[f"abs_error_{c}"].sum() / by["rows"].sum() for c in CONDITIONS}
    print("pooled MAE over all rows:", {c: round(v, 4) for c, v in pooled.items()})
    print("pooled gap closed:", round((pooled["zeros"] - pooled["imputed"]) / (pooled["zeros"] - pooled["true"]), 3))
    print("mean of per-substance gap closed:", round(mae["gap_closed"].mean(), 3),
          "median:", round(mae["gap_closed"].median(), 3),
          "substances with >= 0.5:", int((mae["gap_closed"] >= 0.5).sum()), "of", len(mae))
    for label in ("trained", "imputed_plain", "imputed_widened"):
        print(f"coverage {label}: {by[f'covered_{label}'].sum() / by['rows'].sum():.4f}, "
              f"mean width {by[f'width_{label}'].sum() / by['rows'].sum():.3f} nm")
    print(f"substance shifts (training rows): n {len(shifts)}, median {np.median(shifts):.4f}, "
          f"90 % quantile {np.quantile(shifts, CONFIDENCE):.4f} (log size)")


if __name__ == "__main__":
    main()
