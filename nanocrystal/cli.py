"""`python -m nanocrystal <command>` (or `nanocrystal <command>`): fetch, validate, convert, train, tune, report,
predict, design, app."""
from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from .config import ROOT, Config, config_from_args
from .errors import InputError


class Terminated(BaseException):
    """SIGTERM (`kill`, a scheduler's cancel) raised where the command runs, as Ctrl-C raises KeyboardInterrupt: the
    command unwinds, so a run's worker pool ends its workers and its folder's lock is released."""


def _terminate(*_) -> None:
    raise Terminated


def guarded(command: Callable[[], int]) -> int:
    """Run a command as the command line does: an expected error (InputError: a bad file, flag, config or run folder;
    OSError: a path the machine refuses) prints its message, one line per problem, and exits 2; Ctrl-C prints one line
    and exits 130 (the shell's code for an interrupt), SIGTERM one line and 143; any other exception is a bug and keeps
    its traceback."""
    in_main_thread = threading.current_thread() is threading.main_thread()  # where Python runs signal handlers
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return command()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except (InputError, OSError) as error:
        print(str(error), file=sys.stderr)
        return 2
    finally:
        if previous is not None:  # None: not in the main thread, or a handler set outside Python (left as it is)
            signal.signal(signal.SIGTERM, previous)


def finite_number(text: str) -> float:
    """argparse type: a number that stays finite where the models compute (float32)."""
    from .recipes import FLOAT32_MAX

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def cmd_fetch(args: argparse.Namespace) -> int:
    from .fetch import fetch_all

    fetch_all(Path(args.root), args.mirror)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .descriptors import load_descriptors
    from .predict import read_recipes
    from .recipes import EMPTY_NAME, NAME_COLUMNS, RecipeError, load_shapes, pool_counts, read_table

    shapes = None
    try:
        shapes = load_shapes(args.shapes)
        # --predict: the layout `predict` reads (labels and unused slots may be absent; CSV or xlsx)
        table = read_recipes(args.file, shapes).table if args.predict else read_table(args.file, len(shapes))
    except RecipeError as error:
        print("\n".join(error.problems), file=sys.stderr)
        if len(error.problems) > 1:
            print(f"{args.file}: {len(error.problems)} problem(s)", file=sys.stderr)
        if shapes is not None and not args.predict and _reads_for_predict(args.file, shapes):
            print(f"{args.file}: a valid input for predict (labels or slots left out): check it with "
                  "validate --predict", file=sys.stderr)
        return 2
    print(f"{args.file}: {len(table):,} rows")
    if args.predict:
        reagents = (table[list(NAME_COLUMNS)] != EMPTY_NAME).sum(axis=1)
        print(f"  reagents a recipe: {reagents.min()} to {reagents.max()}")
    else:
        counts = pool_counts(table)
        print("  pools: " + ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "rows"))
    products = table.loc[~table["failed"], "T2"].value_counts()
    print(f"  products: {len(products):,} (most rows: " + ", ".join(f"{n} {c}" for n, c in products.head(5).items())
          + ")")
    if args.feats:
        store = load_descriptors(args.feats)
        coverage = store.coverage(table)
        for role, missing in coverage.items():
            print(f"  {role} without a descriptor: {len(missing)} names in {sum(missing.values())} rows")
            for name, count in missing.most_common():
                print(f"    {name}: {count}")
    return 0


def _reads_for_predict(path: str, shapes: list[str]) -> bool:
    from .predict import read_recipes
    from .recipes import RecipeError

    try:
        read_recipes(path, shapes)
    except RecipeError:
        return False
    return True


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import UNKNOWN_SPEED, coincident_rows, convert_file, save
    from .recipes import UNKNOWN, load_shapes, read_table

    shapes = load_shapes(args.shapes)
    reference = read_table(args.reference, len(shapes)) if args.reference else None
    result = convert_file(args.xlsx, shapes, labels=not args.no_labels)
    save(result, args.out, args.report, args.force)
    table = result.table
    print(f"{args.xlsx}: {result.sheet_rows:,} rows -> {len(table):,} converted, {result.dropped_rows:,} dropped "
          f"({len(result.drops):,} problems" + (f", listed in {args.report})" if args.report else ")"))
    print(f"  unknown fields kept: Num {UNKNOWN} in {int((table['Num'] == UNKNOWN).sum()):,} rows, "
          f"Y2 {UNKNOWN} in {int((table['Y2'] == UNKNOWN).sum()):,}, "
          f"Speed {UNKNOWN_SPEED} in {int((table['Speed'] == UNKNOWN_SPEED).sum()):,}")
    print(f"  wrote {args.out}")
    if reference is not None:
        print(f"  coincide with {Path(args.reference).name} on (product, temperatures, time, size): "
              f"{coincident_rows(table, reference):,} of {len(reference):,} rows")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .files import save_csvs
    from .predict import legend, load_predictor, predict_recipes, read_recipes, summary
    from .substances import read_substances

    torch.set_num_threads(1)  # small batches: one thread is fastest on a shared CPU
    predictor = load_predictor(args.size_run, args.shape_run)
    substances = read_substances(args.substances) if args.substances else None
    table = predict_recipes(predictor, read_recipes(args.recipes, predictor.shapes), args.allow_unknown,
                            args.confidence, substances)
    if args.out:
        save_csvs([(table, Path(args.out))], args.force)
    print(summary(table))
    print(legend(table, args.confidence))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_design(args: argparse.Namespace) -> int:
    import time

    import torch

    from .design import design, parse_vary
    from .files import save_csvs
    from .predict import check_known, legend, load_predictor, read_recipes, shape_column, summary
    from .substances import read_substances

    start = time.time()
    torch.set_num_threads(1)  # small batches: one thread is fastest on a shared CPU
    predictor = load_predictor(args.size_run, args.shape_run)
    template = read_recipes(args.template, predictor.shapes)
    substances = read_substances(args.substances) if args.substances else None
    predictor = predictor.with_substances(template.table, substances)
    check_known(predictor, template)
    ranges = parse_vary(args.vary, template.table.iloc[0])
    result = design(predictor, template.table, args.target_size, ranges, args.target_shape, args.top, args.trials,
                    args.seed, on_batch=design_progress(args.trials), tolerance=args.tolerance,
                    confidence=args.confidence)
    if args.out:
        save_csvs([(result.table, Path(args.out))], args.force)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    varied = {r.column: r.name for r in ranges}  # the console names an amount by its substance
    target = [shape_column(args.target_shape)] if args.target_shape else []
    print(summary(result.table.rename(columns=varied), ["T2", *varied.values(), *target]))
    print(legend(result.table, args.confidence)
          + f"; p_within: P(|size - {args.target_size:g}| <= {args.tolerance:g} nm)")
    print(f"{result.evaluated} candidates searched in {time.time() - start:.1f} s"
          + (f"; wrote {args.out}" if args.out else ""))
    return 0


def design_progress(trials: int) -> Callable[[int, int, float], None]:
    """design()'s on_batch: a bar over the trials with the best loss so far (on a terminal)."""
    from .progress import Progress

    progress = Progress(trials, "design", unit="trials")
    return lambda evaluated, _, best: progress.update(evaluated - progress.done, best_loss=best)


def app_runs(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """The app's size and shape runs: as given, or (without --size-run) the newest finished ones in --runs; and every
    problem, one line each."""
    from .predict import PredictError, newest_run, run_config

    runs, problems = {"size": args.size_run, "shape": args.shape_run}, []
    made_by = {"size": ("size", "bash scripts/best_size.sh", "about 19 min"),
               "shape": ("recipe-only shape", "bash scripts/best_cls.sh", "its <P>-recipe run; about 15 min")}
    for task in ("size", "shape") if args.size_run is None and args.shape_run is None else ():
        runs[task] = newest_run(args.runs, task)
        if runs[task] is None:
            kind, command, time = made_by[task]
            problems.append(f"error: no finished {kind} run in {args.runs}: `{command}` makes one ({time}); "
                            f"or give --size-run (and --shape-run)")
    if args.size_run is None and args.shape_run is not None:
        problems.append("error: --shape-run needs --size-run")
    for task, run in runs.items():
        try:
            found = None if run is None else run_config(Path(run)).task
        except PredictError as error:
            problems.append(f"error: {error}")
            continue
        if found not in (None, task):
            problems.append(f"error: {run}: --{task}-run is a {found} run")
    return runs, problems


def cmd_app(args: argparse.Namespace) -> int:
    """Serve the app (streamlit run nanocrystal/app.py) in place of this process; 2 on a problem with the runs."""
    import os

    runs, problems = app_runs(args)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    print(f"size run: {runs['size']}\nshape run: {runs['shape'] or '(none: size only)'}", flush=True)
    options = {"server.address": "localhost", "server.port": args.port, "server.headless": "true",
               "browser.gatherUsageStats": "false", "server.fileWatcherType": "none", "client.toolbarMode": "minimal"}
    command = [sys.executable, "-m", "streamlit", "run", str(Path(__file__).with_name("app.py")),
               *[f"--{name}={value}" for name, value in options.items()],
               "--", "--size-run", str(runs["size"]), *(["--shape-run", str(runs["shape"])] if runs["shape"] else [])]
    # streamlit puts the script's folder on sys.path, not the project's: the app imports nanocrystal from ROOT
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    os.execve(sys.executable, command, {**os.environ, "PYTHONPATH": path})  # the server replaces this process


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report

    report(args.runs, Path(args.out), Path(args.assets), Path(args.shapes), Path(args.paper_predictions),
           Path(args.readme) if args.readme else None, Path(args.data_dir), Path(args.feats))
    print(f"wrote {args.out} (figures in {args.assets})")
    return 0


def train_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return guarded(lambda: train(argv))


def train(argv: list[str]) -> int:
    from .runs import run_experiment

    cfg = config_from_args(argv)  # every value checked before anything is written
    run_dir = run_experiment(cfg, command="python train.py " + " ".join(argv))
    print(f"run folder: {run_dir}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    return train_main(args.args)


def cmd_tune(args: argparse.Namespace) -> int:
    from .sweep import main

    return main(args.args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nanocrystal", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    fetch = commands.add_parser("fetch", help="download (or copy from $NANOCRYSTAL_MIRROR) and verify the dataset")
    fetch.add_argument("--root", default=str(ROOT), help="project folder that receives data/ and feats/")
    fetch.add_argument("--mirror", default=None, help="local copy of the upstream repository files")
    fetch.set_defaults(handler=cmd_fetch)

    # every Config field is a flag of train.py's own parser: pass the arguments through untouched ("\0": no options)
    train = commands.add_parser("train", help="train and evaluate over the folds of a split, as `python train.py` "
                                "(`nanocrystal train --help` lists the flags)", add_help=False, prefix_chars="\0")
    train.add_argument("args", nargs=argparse.REMAINDER)
    train.set_defaults(handler=cmd_train)

    tune = commands.add_parser("tune", help="search Config fields on Ray Tune, every trial scored on inner validation "
                               "with early stopping (`nanocrystal tune --help`; train.py's flags set the rest)",
                               add_help=False, prefix_chars="\0")
    tune.add_argument("args", nargs=argparse.REMAINDER)
    tune.set_defaults(handler=cmd_tune)

    validate = commands.add_parser("validate", help="check a recipe CSV and print a summary, or every error")
    validate.add_argument("file")
    validate.add_argument("--feats", default=None, help="descriptor .pkl: also report substances without one")
    validate.add_argument("--shapes", default=str(ROOT / "data" / "shapes_list.txt"))
    validate.add_argument("--predict", action="store_true",
                          help="check a file to predict: labels and unused reagent slots may be left out; .xlsx too")
    validate.set_defaults(handler=cmd_validate)

    convert = commands.add_parser("convert", help="turn the human-readable recipe sheet (xlsx) into the model CSV")
    convert.add_argument("xlsx")
    convert.add_argument("out", help="model CSV to write")
    convert.add_argument("--report", default=None, help="CSV listing every dropped row: row, column, value, reason")
    convert.add_argument("--shapes", default=str(ROOT / "data" / "shapes_list.txt"))
    convert.add_argument("--reference", default=str(ROOT / "data" / "0309_classification_and_reg-raw-v3.csv"),
                         help="model CSV to count coinciding rows against ('' = skip)")
    convert.add_argument("--no-labels", action="store_true",
                         help="recipes to predict: size, shape and counts may be absent (-1 = unknown)")
    convert.add_argument("--force", action="store_true", help="replace OUT and the report if they exist")
    convert.set_defaults(handler=cmd_convert)

    predict = commands.add_parser("predict", help="predict size, shape and applicability of recipes with run folders")
    predict.add_argument("recipes", help="recipe file: model CSV (labels optional) or the xlsx layout")
    predict.add_argument("--size-run", required=True, help="run folder of a size run (its fold checkpoints)")
    predict.add_argument("--shape-run", default=None, help="run folder of a shape run: adds shape and p_failed")
    predict.add_argument("--out", default=None, help="CSV to write (all columns)")
    predict.add_argument("--allow-unknown", action="store_true",
                         help="substances without a descriptor count as zeros (warning column) instead of an error")
    predict.add_argument("--force", action="store_true", help="replace OUT if it exists")
    predict.add_argument("--substances", default=None, metavar="FILE",
                         help="CSV of substances the runs lack (columns name, kind, formula, smiles, as "
                              "nanocrystal/substances.csv): their vectors are imputed or computed, the interval widened")
    predict.add_argument("--confidence", type=finite_number, default=0.9,
                         help="of the size interval (size_lo, size_hi) and the shape set (default 0.9)")
    predict.set_defaults(handler=cmd_predict)

    design = commands.add_parser("design", help="search conditions and amounts of a template for a target size/shape")
    design.add_argument("--size-run", required=True, help="run folder of a size run")
    design.add_argument("--shape-run", default=None, help="run folder of a shape run (needed for --target-shape)")
    design.add_argument("--template", required=True, help="recipe file with one recipe (CSV or xlsx)")
    design.add_argument("--target-size", type=finite_number, required=True, help="nm")
    design.add_argument("--target-shape", default=None, help="a name from the shapes list, e.g. sphere")
    design.add_argument("--vary", nargs="+", action="extend", required=True, metavar="NAME=LOW:HIGH",
                        help="Temperature1, Temperature2, Time, Speed or a substance of the template (amount, mmol)")
    design.add_argument("--top", type=int, default=5, help="distinct candidates to return")
    design.add_argument("--trials", type=int, default=256, help="candidates to evaluate")
    design.add_argument("--seed", type=int, default=0, help="sampler seed: the same seed gives the same candidates")
    design.add_argument("--tolerance", type=finite_number, default=0.5,
                        help="nm: candidates are ranked by P(|size - target| <= tolerance) (default 0.5)")
    design.add_argument("--confidence", type=finite_number, default=0.9,
                        help="of each candidate's size interval (default 0.9)")
    design.add_argument("--out", default=None, help="CSV to write: model columns + predictions")
    design.add_argument("--force", action="store_true", help="replace OUT if it exists")
    design.add_argument("--substances", default=None, metavar="FILE",
                        help="CSV of substances the runs lack (columns name, kind, formula, smiles, as "
                             "nanocrystal/substances.csv): their vectors are imputed or computed, the interval widened")
    design.set_defaults(handler=cmd_design)

    app = commands.add_parser("app", help="serve the web app (predict, explore, design, data) on localhost")
    app.add_argument("--size-run", default=None, help="run folder of a size run (default: the newest finished size "
                     "run and recipe-only shape run in --runs)")
    app.add_argument("--shape-run", default=None, help="run folder of a recipe-only shape run (with --size-run; "
                     "without it the app predicts size only)")
    app.add_argument("--port", type=int, default=8501)
    app.add_argument("--runs", default=str(ROOT / "runs"), help="where to look for the newest runs")
    app.set_defaults(handler=cmd_app)

    report = commands.add_parser("report", help="comparison tables and figures from run folders (metrics.json)")
    report.add_argument("runs", nargs="+", help="run folders, e.g. runs/*")
    report.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    report.add_argument("--assets", default=str(ROOT / "assets"), help="folder for the PNG figures")
    report.add_argument("--readme", default=None,
                        help="also replace the block between <!-- results:begin --> and <!-- results:end --> here")
    report.add_argument("--shapes", default=str(ROOT / "data" / "shapes_list.txt"))
    report.add_argument("--data-dir", default=Config.data_dir, help="the recipes, for the t-SNE of CLS embeddings")
    report.add_argument("--feats", default=Config.feats_path, help="the descriptors, for the t-SNE of CLS embeddings")
    report.add_argument("--paper-predictions", default=str(ROOT / "data" / "source" / "size prediciton.csv"),
                        help="the paper's out-of-fold size predictions (true,pred), drawn beside ours")
    report.set_defaults(handler=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: args.handler(args))
