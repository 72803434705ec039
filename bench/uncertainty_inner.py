"""How the size intervals are calibrated, chosen on training rows only (docs/uncertainty.md).

For each outer fold of a finished size run (its config and its trees' inner-CV choices, from fold<k>.json), this makes
the calibration rows exactly as `train.py` does (`runs.calibration_rows`: `--calibration_folds` inner folds of the
fold's training rows, each scored by the blend's trees refitted on the rest, then the series correction), and compares
calibration variants by a nested check on those rows only: calibrate on all inner folds but one, score the one left
out, for every inner fold. The held-out outer folds are never read.

    python bench/uncertainty_inner.py --run runs/size-XXXX [--calibration_folds 10] [--out runs/uncertainty-inner.csv]

Prints, per variant, the coverage of the 90 % intervals and their mean width (nm), overall and by series.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from crepes import ConformalPredictiveSystem

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanocrystal.baselines import Candidate, FittedTree  # noqa: E402
from nanocrystal.config import Config  # noqa: E402
from nanocrystal.descriptors import load_descriptors  # noqa: E402
from nanocrystal.recipes import load_dataset  # noqa: E402
from nanocrystal.runs import calibration_rows, fold_data, inner_tree_model  # noqa: E402
from nanocrystal.splits import combined_table, run_folds  # noqa: E402
from nanocrystal.uncertainty import SizeCalibration, difficulty_features  # noqa: E402

CONFIDENCE = 0.9


def chosen_trees(record: dict, cfg: Config) -> list[FittedTree]:
    """The blend's tree models as the fold chose them (only `candidate` is read by `inner_tree_model`)."""
    chosen = []
    for model in cfg.blend_models:
        selection = record["selection"][f"tree_blend_{model}"]
        chosen.append(FittedTree(None, [], Candidate(selection["params"], selection["weak_weight"]), selection))
    return chosen


def make_rows(run: Path, calibration_folds: int) -> pd.DataFrame:
    cfg = replace(Config.load(run / "config.json"), calibration_folds=calibration_folds)
    dataset = load_dataset(cfg.data_dir)
    store = load_descriptors(cfg.feats_path)
    table = combined_table(dataset)
    parts = []
    for fold in run_folds(cfg, table):
        if not (run / f"{fold.name}.json").is_file():  # a --folds run: its folds only
            continue
        start = time.time()
        record = json.loads((run / f"{fold.name}.json").read_text())
        data = fold_data(cfg, table, fold, dataset.n_shapes)
        rows = calibration_rows(cfg, data, inner_tree_model(cfg, chosen_trees(record, cfg), store, dataset.n_shapes))
        parts.append(pd.DataFrame({"fold": fold.name, **rows}))
        print(f"{fold.name}: {len(parts[-1])} calibration rows ({time.time() - start:.0f} s)", flush=True)
    return pd.concat(parts, ignore_index=True)


VARIANTS = {  # name: (difficulty features of the rows, normalised)
    "plain baseline (seen/new only)": (lambda r: difficulty_features(r["spread"], r["proximity"]), False),
    "spread + proximity (adopted)": (lambda r: difficulty_features(r["spread"], r["proximity"]), True),
    "spread only": (lambda r: difficulty_features(r["spread"], r["proximity"])[:, :2], True),
    "proximity only": (lambda r: difficulty_features(r["spread"], r["proximity"])[:, [0, 2]], True),
    "spread + proximity + log prediction": (
        lambda r: np.column_stack([difficulty_features(r["spread"], r["proximity"]), np.log(r["predicted"])]), True),
}


def nested(rows: pd.DataFrame, features, normalized: bool, asymmetric: bool = False) -> pd.DataFrame:
    """Leave one inner fold out, within each outer fold: coverage and width of the left-out rows' intervals."""
    scored = []
    for _, fold in rows.groupby("fold", sort=False):
        for group in np.unique(fold["group"]):
            fit, test = fold[fold["group"] != group], fold[fold["group"] == group]
            calibration = SizeCalibration.fit(fit["residual"].to_numpy(), features(fit), fit["seen"].to_numpy(),
                                              fit["group"].to_numpy(), normalized)
            seen = test["seen"].to_numpy()
            sigma = calibration.sigma(features(test), seen) if normalized else np.ones(len(test))
            predicted = test["predicted"].to_numpy()
            if asymmetric:  # the predictive system's 5th and 95th percentiles
                system = ConformalPredictiveSystem().fit(calibration.log_residuals, sigmas=calibration.sigmas,
                                                         bins=calibration.bins)
                bounds = np.exp(system.predict_int(np.log(predicted), sigmas=sigma, bins=calibration.bins_of(seen),
                                                   confidence=CONFIDENCE))
                lo, hi = bounds[:, 0], bounds[:, 1]
            else:
                lo, hi = calibration.interval(predicted, sigma, seen, CONFIDENCE)
            true = predicted * np.exp(test["residual"].to_numpy())
            scored.append(pd.DataFrame({"inside": (true >= lo) & (true <= hi), "width": hi - lo, "seen": seen}))
    return pd.concat(scored)


def line(name: str, scored: pd.DataFrame) -> str:
    by = scored.groupby("seen").agg(coverage=("inside", "mean"), width=("width", "mean"))
    parts = [f"{name:40s} coverage {scored['inside'].mean():.3f} width {scored['width'].mean():.2f}"]
    for seen, label in ((True, "seen"), (False, "new")):
        if seen in by.index:
            parts.append(f"{label} {by.loc[seen, 'coverage']:.3f} / {by.loc[seen, 'width']:.2f}")
    return " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished size run with a tree blend (its choices are reused)")
    parser.add_argument("--calibration_folds", type=int, default=10)
    parser.add_argument("--out", default="", help="CSV of the calibration rows (made once, read back when present)")
    args = parser.parse_args()
    out = Path(args.out) if args.out else None
    rows = pd.read_csv(out) if out is not None and out.is_file() else make_rows(Path(args.run), args.calibration_folds)
    if out is not None and not out.is_file():
        rows.to_csv(out, index=False)
    print(f"{len(rows)} calibration rows, {rows['seen'].mean():.1%} of a seen series; nested 90 % intervals:")
    for name, (features, normalized) in VARIANTS.items():
        print(line(name, nested(rows, lambda r: features({k: r[k].to_numpy() for k in r}), normalized)))
    adopted, normalized = VARIANTS["spread + proximity (adopted)"]
    print(line("spread + proximity, asymmetric (CPS 5-95 %)",
               nested(rows, lambda r: adopted({k: r[k].to_numpy() for k in r}), normalized, asymmetric=True)))


if __name__ == "__main__":
    main()
