"""`python -m nanocrystal tune`: a search over a few Config fields on Ray Tune, each trial a run scored on inner
validation only, with early stopping.

A trial is a train.py run of the given flags plus the trial's values, with --inner_val_frac (default 0.2): each outer
fold holds out a part of its own training rows (whole series for the grouped split, whole products for
leave-one-product-out, as `runs.inner_fold`) and is scored there; the outer held-out rows are never read, so the
outer folds stay fit for the one final score of the chosen preset. A trial reports its mean inner score after each
fold; ASHA stops the trials that trail the others after as many folds (early stopping), and Optuna's TPE proposes the
next values. The trials' run folders, a table of every trial (trials.csv) and the best values go to --out.

    python -m nanocrystal tune --space size_blend --trials 24 [--ray_address HEAD:6379] [train.py flags]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from .config import ROOT, Config, config_from_args
from .errors import InputError

# name -> {Config field: candidate values}; a list value is joined with "+" for the search (Optuna's categories are
# plain values) and split again for the trial
SPACES: dict[str, dict[str, list]] = {
    # the size preset's blend: which tree models beside the transformer, their weight, LightGBM's loss, the series
    # correction's distance scale (docs/size_model.md chose them on bench/size_inner_cv.py)
    "size_blend": {
        "blend_models": ["lgbm", "et", "lgbm+et", "lgbm+et+rf"],
        "tree_blend": [0.5, 0.6, 0.7, 0.8, 0.9],
        "lgbm_huber_delta": [0.0, 0.05, 0.15],
        "correction_scale": [0.25, 0.5, 1.0],
    },
    # the trees alone (--model lgbm, say): the descriptor PCA width and the substance columns of their features
    "tree_features": {
        "descriptor_pca": [4, 8, 16],
        "substance_columns": [30, 60, 120],
    },
    # the transformer's own schedule and width
    "transformer": {
        "epochs": [100, 150, 200],
        "lr": [1e-3, 2e-3, 4e-3],
        "d_model": [32, 48, 64],
    },
}
LIST_FIELDS = ("blend_models",)


class SweepError(InputError, ValueError):
    pass


def primary(cfg: Config) -> tuple[str, str]:
    """The metric a trial is judged on and its direction."""
    return ("mae", "min") if cfg.task == "size" else ("accuracy", "max")


def trial_config(base: dict, values: dict, run_dir: Path) -> Config:
    fields = {k: (v.split("+") if k in LIST_FIELDS else v) for k, v in values.items()}
    # a trial is judged on its point predictions: its intervals (calibration_folds refits per fold) would be unused
    return Config.from_dict({**base, **fields, "save_path": str(run_dir), "backend": "local", "workers": 1,
                             "resume": False, "calibration_folds": 0})


def trial(values: dict, base: dict, out: str) -> None:
    """One Tune trial: the run, reporting the mean inner score over the folds done so far after each fold."""
    from ray import tune

    cfg = trial_config(base, values, Path(out) / "trials" / tune.get_context().get_trial_id())
    metric, _ = primary(cfg)
    scores: list[float] = []

    def report(record: dict) -> None:
        if record["scored_on"] != "inner":  # cannot happen with --inner_val_frac; a sweep must never choose on it
            raise SweepError(f"{record['fold']}: scored on the outer held-out rows")
        scores.append(record["metrics"][metric])
        tune.report({metric: statistics.fmean(scores), "folds": len(scores)})

    from .runs import run_experiment

    run_experiment(cfg, command="python -m nanocrystal tune (trial)", on_fold=report)


def parse(argv: list[str]) -> tuple[argparse.Namespace, Config]:
    parser = argparse.ArgumentParser(prog="python -m nanocrystal tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="size_blend", choices=list(SPACES), help="the fields searched")
    parser.add_argument("--search", nargs="+", default=[], metavar="FIELD=V1,V2",
                        help="search these fields and values instead of --space's (e.g. lr=0.001,0.002 depth=1,2)")
    parser.add_argument("--trials", type=int, default=16, help="trials Optuna proposes (default 16)")
    parser.add_argument("--out", default="", help="folder for the trials and trials.csv (default runs/tune-<space>-"
                        "<time>)")
    args, train_flags = parser.parse_known_args(argv)
    cfg = config_from_args(train_flags)  # the base config: every train.py flag, checked before anything starts
    if args.trials < 1:
        raise SweepError(f"--trials must be >= 1, got {args.trials}")
    if not cfg.inner_val_frac:  # scored on the outer folds, a sweep would choose on the held-out rows
        cfg = Config.from_dict({**json.loads(cfg.to_json()), "inner_val_frac": 0.2})
    if cfg.save_path or cfg.resume:
        raise SweepError("--save_path and --resume name one run; a sweep writes its trials under --out")
    args.values = search_space(args.search) if args.search else SPACES[args.space]
    for name, values in args.values.items():  # a bad field or value stops here, before Ray starts
        for value in values:
            trial_config(json.loads(cfg.to_json()), {name: value}, Path("x"))
    return args, cfg


def search_space(specs: list[str]) -> dict[str, list]:
    """--search FIELD=V1,V2 ... -> {field: [values]}; each value read as JSON (a number, true, false) or else as
    text (lgbm+et)."""
    space = {}
    for spec in specs:
        name, _, values = spec.partition("=")
        if not name or not values:
            raise SweepError(f"--search {spec!r}: expected FIELD=V1,V2,...")
        space[name] = [json_or_text(value) for value in values.split(",")]
    return space


def json_or_text(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


def main(argv: list[str]) -> int:
    args, cfg = parse(argv)
    from .backend import check, ray_session, resources

    check(cfg)
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    name = "custom" if args.search else args.space
    out = Path(args.out) if args.out else ROOT / "runs" / f"tune-{name}-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and any(out.iterdir()):
        raise SweepError(f"{out}: already holds a sweep; choose another --out")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    metric, mode = primary(cfg)
    base = json.loads(cfg.to_json())
    space = {name: tune.choice(values) for name, values in args.values.items()}
    n_folds = len(cfg.folds) or (len(cfg.object_name) or cfg.n_folds)
    start = time.time()
    with ray_session(cfg):
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trial, base=base, out=str(out)),
                                {"cpu": resources(cfg)["num_cpus"], "gpu": resources(cfg)["num_gpus"]}),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=args.trials,
                search_alg=OptunaSearch(seed=cfg.seed),
                # a trial's folds are its steps: a trial behind the others after as many folds stops there
                scheduler=ASHAScheduler(time_attr="folds", max_t=n_folds, grace_period=1, reduction_factor=2)),
            run_config=tune.RunConfig(name="tune", storage_path=str(out / "ray"), verbose=1))
        results = tuner.fit()
    table = trials_table(results, metric, mode, n_folds)
    table.to_csv(out / "trials.csv", index=False)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    finished = table[table["folds"] == n_folds]
    if finished.empty:
        raise SweepError("no trial scored every fold; see the errors above")
    best = finished.iloc[0]
    chosen = {name: best[name] for name in args.values}
    (out / "best.json").write_text(json.dumps({"metric": metric, "inner_score": float(best[metric]),
                                               "values": chosen, "base": base}, indent=2, default=str))
    print(f"best of {len(finished)} trials that scored all {n_folds} folds on inner validation: "
          + ", ".join(f"--{k} {' '.join(str(v).split('+'))}" for k, v in chosen.items())
          + f" ({metric} {best[metric]:.4f}); {len(table) - len(finished)} stopped early; {out}; wall time "
          f"{time.time() - start:.0f} s")
    return 0


def trials_table(results, metric: str, mode: str, n_folds: int) -> pd.DataFrame:
    """One row per trial: its values, the folds it scored and its mean inner score over them; finished trials first,
    best first."""
    rows = []
    for result in results:
        row = dict(result.config or {})
        row["folds"] = int((result.metrics or {}).get("folds", 0))
        row[metric] = (result.metrics or {}).get(metric, float("nan"))
        row["error"] = "" if result.error is None else str(result.error).splitlines()[0]
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(["folds", metric], ascending=[False, mode == "min"], na_position="last",
                             ignore_index=True)
