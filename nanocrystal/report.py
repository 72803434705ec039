"""Comparison tables and figures from run folders' metrics.json, with the paper's figures in their own column.

`python -m nanocrystal report RUN_DIR... [--out docs/results.md] [--assets assets] [--readme README.md]` writes a
markdown report of every run (and, with --readme, the block between README's results markers: the rows of
`readme_runs`) plus PNG figures. Everything is
derived from the run folders and the paper's published numbers, so it regenerates; every file is written atomically.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from .config import ROOT  # noqa: E402
from .errors import InputError  # noqa: E402
from .metrics import SIZE_METRICS  # noqa: E402
from .files import write_atomic, write_text  # noqa: E402
from .runs import NEURAL_MODELS  # noqa: E402
from .uncertainty import FoldCalibration  # noqa: E402

# The paper's figures (arXiv 2412.10838): 5-fold paper split, seed 0; leave-one-product-out with pretrain + finetune.
PAPER_SIZE = {"transformer": {"mae": 1.3995, "r2": 0.7198}, "dt": {"mae": 2.0495}, "rf": {"mae": 1.6307},
              "mlp": {"mae": 3.3697}, "lstm": {"mae": 1.5570}}
PAPER_SHAPE_ACCURACY = {"transformer": 0.893}  # with the measured size as an input
PAPER_LOPO_MAE = {"PbSe": 2.6522, "Ag2S": 3.1903, "Ni": 2.0056, "Cs2NaBiCl6": 1.4805}
MODEL_NAMES = {"transformer": "Transformer", "dt": "Decision tree", "rf": "Random forest",
               "et": "Extra trees", "hgb": "HistGradientBoosting", "lgbm": "LightGBM", "mlp": "DNN (MLP)",
               "lstm": "LSTM"}
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"


class ReportError(InputError, ValueError):
    pass


@dataclass(frozen=True)
class Run:
    path: Path
    metrics: dict
    config: dict  # config.json when the folder has one, else {}

    def model_name(self, model: str) -> str:
        """LightGBM with its seeds and loss when they are not one fit with squared error."""
        name = MODEL_NAMES.get(model, model)
        if model != "lgbm":
            return name
        details = [f"{self.config['lgbm_seeds']} seeds"] if self.config.get("lgbm_seeds", 1) > 1 else []
        if self.config.get("lgbm_huber_delta") and self.metrics["task"] == "size":
            details.append(f"Huber {self.config['lgbm_huber_delta']:g}")
        return name + (f" ({', '.join(details)})" if details else "")

    @property
    def label(self) -> str:
        name = self.model_name(self.metrics["model"])
        weight = self.config.get("tree_blend", self.config.get("lgbm_blend"))  # the older runs' name for it
        if weight and self.metrics["model"] in NEURAL_MODELS:
            trees = " + ".join(self.model_name(m) for m in self.config.get("blend_models", ["lgbm"]))
            name += f" + {trees} ({weight:g})"
        extras = []
        if self.metrics["task"] == "shape":
            extras.append("measured size given" if self.config.get("size_as_input") else "recipe only")
        if self.config.get("series_correction") and self.metrics["task"] == "size" \
                and self.metrics["model"] in NEURAL_MODELS:
            extras.append("series correction")
        if self.metrics.get("object_name") and self.config.get("use_product"):
            extras.append("product token")  # upstream drops it for unseen products
        if self.config.get("augmented"):
            extras.append(f"augmented: {Path(self.config['augmented']).name}")
        return name + (f" ({', '.join(extras)})" if extras else "")


def load_run(path: str | Path) -> Run:
    path = Path(path)
    metrics_path = path / "metrics.json"
    if not metrics_path.is_file():
        raise ReportError(f"{metrics_path}: no such file (an unfinished run? finish it with --resume)")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(f"{metrics_path}: not JSON ({error})") from None
    missing = [k for k in ("task", "model", "split", "mean", "per_fold") if k not in metrics]
    if missing:
        raise ReportError(f"{metrics_path}: missing keys {', '.join(missing)}")
    config_path = path / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return Run(path, metrics, config)


def not_a_result(run: Run) -> str:
    """Why a finished run folder is no result to table beside the paper ('' if it is one): a tuning run scored on
    inner validation rows, a --folds run that scored only some of the split's folds, a few-shot run (the held-out
    product's first recipes in training: no leave-one-product-out figure; `task_tables shots` tables it), or a run on
    another split seed than the paper's 0 (other validation rows; `task_tables seeds` tables the seeds)."""
    if run.metrics.get("scored_on", "held-out") != "held-out":
        return f"scored on {run.metrics['scored_on']} validation rows (a tuning run)"
    if run.config.get("shots"):
        return f"{run.config['shots']} recipes of each held-out product in training (a few-shot run)"
    if run.metrics["split"] != "lopo" and run.config.get("seed", 0) != 0:
        return f"split seed {run.config['seed']}, not the paper's 0 (a run of `--seeds`)"
    expected = run.config.get("n_folds", 5)
    if run.metrics["split"] != "lopo" and len(run.metrics["per_fold"]) < expected:  # a product is its own result
        return f"{len(run.metrics['per_fold'])} of {expected} folds scored"
    return ""


# ---- tables ----------------------------------------------------------------------------------------------------------

def _number(value: Optional[float], digits: int = 4) -> str:
    return "" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _command(run: Run) -> str:
    """The command that made the run, its paths inside this checkout written from the checkout's root."""
    return f"`{(run.metrics.get('command') or run.path.name).replace(f'{ROOT}/', '')}`"


def _provenance(run: Run) -> list[str]:
    """How the figure was chosen, the command that made it, and its wall time."""
    wall = run.metrics.get("wall_s")
    return [run.metrics.get("selection", "not stated"), _command(run), "" if wall is None else f"{wall / 60:.1f} min"]


PROVENANCE = ["selection", "command", "wall"]


def _order(runs: list[Run], key: str) -> list[Run]:
    """Paper split first, then by the table's main score (best first), then by folder name: a stable order."""
    sign = 1 if key != "accuracy" else -1
    return sorted(runs, key=lambda r: (r.metrics["split"] != "paper", r.metrics["split"],
                                       sign * r.metrics["mean"].get(key, np.inf), str(r.path)))


def size_table(runs: list[Run]) -> str:
    rows = []
    for run in _order([r for r in runs if r.metrics["task"] == "size" and r.metrics["split"] != "lopo"], "mae"):
        mean = run.metrics["mean"]
        paper = PAPER_SIZE.get(run.metrics["model"], {}) if run.metrics["split"] == "paper" else {}
        rows.append([run.label, run.metrics["split"], *[_number(mean.get(m)) for m in SIZE_METRICS],
                     _number(paper.get("mae")), _number(paper.get("r2")), *_provenance(run)])
    header = ["model", "split", "MAE (nm)", "MSE", "RMSE (nm)", "MAPE", "R²", "paper MAE", "paper R²", *PROVENANCE]
    return _markdown(header, rows)


def shape_table(runs: list[Run]) -> str:
    rows = []
    for run in _order([r for r in runs if r.metrics["task"] == "shape" and r.metrics["split"] != "lopo"], "accuracy"):
        mean = run.metrics["mean"]
        comparable = run.metrics["split"] == "paper" and run.config.get("size_as_input")
        paper = PAPER_SHAPE_ACCURACY.get(run.metrics["model"]) if comparable else None
        rows.append([run.label, run.metrics["split"], _number(mean.get("accuracy")), _number(mean.get("f1")),
                     _number(paper), *_provenance(run)])
    return _markdown(["model", "split", "accuracy", "weighted F1", "paper accuracy", *PROVENANCE], rows)


def lopo_table(runs: list[Run]) -> str:
    rows = []
    for run in sorted((r for r in runs if r.metrics["split"] == "lopo" and r.metrics["task"] == "size"),
                      key=lambda r: str(r.path)):
        for fold in run.metrics["per_fold"]:
            rows.append([fold["fold"], run.label, _number(fold.get("mae")), _number(fold.get("r2")),
                         _number(PAPER_LOPO_MAE.get(fold["fold"])), *_provenance(run)])
    return _markdown(["product", "model", "MAE (nm)", "R²", "paper MAE", *PROVENANCE], rows)


def uncertainty_table(runs: list[Run]) -> str:
    """Every run with calibrated intervals or sets: empirical coverage at its confidence over all out-of-fold rows, by
    series, and the mean width beside the plain baseline's (size); set coverage and mean set size (shape)."""
    rows = []
    for run in _order([r for r in runs if "uncertainty" in r.metrics], "mae"):
        u = run.metrics["uncertainty"]
        if run.metrics["task"] == "size":
            cells = [_number(u["coverage"], 3), _number(u["seen_series"]["coverage"], 3),
                     _number(u["new_series"]["coverage"], 3), _number(u["mean_width_nm"], 2),
                     _number(u["baseline"]["mean_width_nm"], 2), "", ""]
        else:
            cells = ["", "", "", "", "", _number(u["set_coverage"], 3), _number(u["mean_set_size"], 2)]
        rows.append([run.label, run.metrics["task"], run.metrics["split"], f"{u['confidence']:g}", *cells,
                     _command(run)])
    header = ["model", "task", "split", "confidence", "coverage", "seen series", "new series", "mean width (nm)",
              "baseline width (nm)", "set coverage", "mean set size", "command"]
    return _markdown(header, rows)


def _has_paper_figure(run: Run) -> bool:
    """Whether the paper reports a figure for this run's model on its task and split (the tables' paper columns)."""
    metrics = run.metrics
    if metrics["split"] == "lopo":
        return metrics["model"] == "transformer"  # the paper's per-product figures are its transformer's
    if metrics["split"] != "paper":
        return False
    if metrics["task"] == "shape":
        return bool(run.config.get("size_as_input")) and metrics["model"] in PAPER_SHAPE_ACCURACY
    return metrics["model"] in PAPER_SIZE


def readme_runs(runs: list[Run]) -> list[Run]:
    """The rows a README reader needs: the best run of each task and split (for shape, of each input mode; for
    leave-one-product-out, by the mean over its products), and the best run of each model the paper reports a figure
    for, beside it. Every run stays in the full report (docs/results.md)."""
    def best_of(group: list[Run]) -> Run:
        if group[0].metrics["task"] == "shape":
            return max(group, key=lambda r: (r.metrics["mean"]["accuracy"], str(r.path)))
        return min(group, key=lambda r: (r.metrics["mean"]["mae"], str(r.path)))

    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        metrics = run.metrics
        if ("accuracy" if metrics["task"] == "shape" else "mae") not in metrics["mean"]:
            continue
        where = (metrics["task"], metrics["split"], metrics["task"] == "shape" and bool(run.config.get("size_as_input")))
        groups.setdefault(where, []).append(run)
        if _has_paper_figure(run):
            groups.setdefault((*where, metrics["model"]), []).append(run)
    chosen = {id(best_of(group)) for group in groups.values()}
    return [run for run in runs if id(run) in chosen]


# ---- figures ---------------------------------------------------------------------------------------------------------

def save_figure(figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # no Software/date metadata: the same runs give the same bytes
        write_atomic(path, lambda temp: figure.savefig(temp, format="png", dpi=120, bbox_inches="tight",
                                                       metadata={"Software": None}))
    finally:
        plt.close(figure)


def parity_plot(ours: pd.DataFrame, label: str, paper: Optional[pd.DataFrame], path: Path) -> None:
    """Predicted vs measured size: our out-of-fold predictions and, when given, the paper's own (same rows)."""
    figure, axis = plt.subplots(figsize=(5, 5))
    clouds = [(ours, label, "tab:blue")] + ([(paper, "paper (published out-of-fold)", "tab:orange")]
                                           if paper is not None else [])
    for frame, name, colour in clouds:
        mae = float(np.mean(np.abs(frame["true"] - frame["pred"])))
        axis.scatter(frame["true"], frame["pred"], s=8, alpha=0.5, color=colour, label=f"{name}: MAE {mae:.3f} nm")
    top = max(20.0, float(max(f["pred"].max() for f, _, _ in clouds)))
    axis.plot([0, top], [0, top], color="black", linewidth=0.8)
    axis.set(xlabel="measured size (nm)", ylabel="predicted size (nm)", xlim=(0, top), ylim=(0, top))
    axis.legend(loc="upper left", fontsize=8)
    save_figure(figure, path)


def confusion_plot(confusion: list[list[int]], shapes: list[str], title: str, path: Path) -> None:
    """Row-normalised confusion matrix (rows: measured shape); shapes never measured nor predicted are left out."""
    matrix = np.asarray(confusion, dtype=float)
    keep = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    matrix = matrix[keep][:, keep]
    names = [s for s, k in zip(shapes, keep) if k]
    rates = np.divide(matrix, matrix.sum(axis=1, keepdims=True), out=np.zeros_like(matrix),
                      where=matrix.sum(axis=1, keepdims=True) > 0)
    figure, axis = plt.subplots(figsize=(6, 5))
    image = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            axis.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=7,
                      color="white" if rates[i, j] > 0.5 else "black")
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set(xlabel="predicted", ylabel="measured", title=title)
    figure.colorbar(image, ax=axis, label="fraction of the measured shape")
    save_figure(figure, path)


def product_bars(runs: list[Run], path: Path) -> None:
    """Leave-one-product-out MAE per product: each run beside the paper."""
    products = sorted({f["fold"] for r in runs for f in r.metrics["per_fold"]})
    series = [(r.label, {f["fold"]: f["mae"] for f in r.metrics["per_fold"]}) for r in runs]
    series.append(("paper (pretrain + finetune)", PAPER_LOPO_MAE))
    width = 0.8 / len(series)
    figure, axis = plt.subplots(figsize=(1.6 * len(products) + 2, 4))
    for k, (name, values) in enumerate(series):
        heights = [values.get(p, np.nan) for p in products]
        axis.bar(np.arange(len(products)) + (k - (len(series) - 1) / 2) * width, heights, width, label=name)
    axis.set_xticks(range(len(products)), products)
    axis.set(ylabel="MAE (nm)", title="leave-one-product-out")
    axis.legend(fontsize=8)
    save_figure(figure, path)


CALIBRATION_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def interval_coverage(run: Run, levels=CALIBRATION_LEVELS) -> pd.DataFrame:
    """Empirical coverage of a size run's out-of-fold intervals at each nominal level (each fold's calibration rows
    and difficulty, as recorded in fold<k>.json and oof_predictions.csv): columns level, all, seen, new, baseline."""
    oof = pd.read_csv(run.path / "oof_predictions.csv")
    records = {f["fold"]: json.loads((run.path / f"{f['fold']}.json").read_text())
               for f in run.metrics["per_fold"]}
    rows = []
    for level in levels:
        inside, base_inside = [], []
        for fold, frame in oof.groupby("fold", sort=False):
            calibration = FoldCalibration.from_state(records[fold]["calibration"])
            seen = (frame["series"] == "seen").to_numpy()
            pred, true = frame["pred"].to_numpy(), frame["true"].to_numpy()
            lo, hi = calibration.size.interval(pred, frame["sigma"].to_numpy(), seen, level)
            base_lo, base_hi = calibration.baseline.interval(pred, np.ones(len(frame)), seen, level)
            inside.append(pd.DataFrame({"inside": (true >= lo) & (true <= hi), "seen": seen}))
            base_inside.append((true >= base_lo) & (true <= base_hi))
        joined = pd.concat(inside)
        rows.append({"level": level, "all": joined["inside"].mean(), "seen": joined.loc[joined["seen"], "inside"].mean(),
                     "new": joined.loc[~joined["seen"], "inside"].mean(),
                     "baseline": np.concatenate(base_inside).mean()})
    return pd.DataFrame(rows)


def calibration_plot(run: Run, path: Path) -> None:
    """Left: empirical against nominal coverage of the size intervals, overall, for seen and new series, and the
    plain baseline. Right: each out-of-fold row's interval width against its absolute error, by series."""
    coverage = interval_coverage(run)
    oof = pd.read_csv(run.path / "oof_predictions.csv")
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    left.plot([0.45, 1.0], [0.45, 1.0], color="black", linewidth=0.8, label="nominal")
    for column, style in (("all", "o-"), ("seen", "s--"), ("new", "^--"), ("baseline", "x:")):
        name = {"all": "all rows", "seen": "seen series", "new": "new series",
                "baseline": "plain baseline, all rows"}[column]
        left.plot(coverage["level"], coverage[column], style, label=name)
    left.set(xlabel="nominal coverage", ylabel="empirical coverage (out-of-fold)", xlim=(0.45, 1.0),
             ylim=(0.45, 1.0), title="size intervals: calibration")
    left.legend(fontsize=8)
    for series, colour in (("seen", "tab:blue"), ("new", "tab:orange")):
        rows = oof[oof["series"] == series]
        right.scatter(rows["hi"] - rows["lo"], np.abs(rows["true"] - rows["pred"]), s=8, alpha=0.5, color=colour,
                      label=f"{series} series ({len(rows)} rows)")
    top = float((oof["hi"] - oof["lo"]).max())
    right.plot([0, top], [0, top / 2], color="black", linewidth=0.8, label="error = half the width")
    right.set(xlabel=f"{run.metrics['uncertainty']['confidence']:.0%} interval width (nm)",
              ylabel="absolute error (nm)", title="width against error")
    right.legend(fontsize=8)
    save_figure(figure, path)


# one fixed colour per label index, the same in every panel: the 10 dark tab20 colours first, then the light ones
_LABEL_COLOURS = [*plt.get_cmap("tab20").colors[0::2], *plt.get_cmap("tab20").colors[1::2]]


def tsne_plot(embeddings: np.ndarray, labels: np.ndarray, names: list[str], path: Path, seed: int = 0,
              groups: Optional[np.ndarray] = None, title: str = "t-SNE of recipe embeddings") -> None:
    """t-SNE of embeddings (e.g. the transformer's CLS vectors, one row per recipe) coloured by label index
    (as the paper's Figure 3c). With `groups`, one t-SNE and one panel per group: embeddings made by different
    models (one per fold) live in different spaces and must not share a map."""
    labels = np.asarray(labels)
    groups = np.zeros(len(labels), dtype=int) if groups is None else np.asarray(groups)
    if not len(embeddings) == len(labels) == len(groups):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels and {len(groups)} groups")
    panels = list(dict.fromkeys(groups.tolist()))  # in order of appearance
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns + 1.6, 3.2 * rows + 0.4), squeeze=False,
                                layout="constrained")
    for axis in axes.flat[len(panels):]:
        axis.set_axis_off()
    for axis, group in zip(axes.flat, panels):
        chosen = groups == group
        points = TSNE(n_components=2, perplexity=min(30.0, (chosen.sum() - 1) / 3), random_state=seed,
                      init="pca").fit_transform(np.asarray(embeddings, dtype=np.float64)[chosen])
        for index in np.unique(labels[chosen]):
            where = labels[chosen] == index
            axis.scatter(points[where, 0], points[where, 1], s=6, color=_LABEL_COLOURS[int(index) % 20])
        axis.set(xticks=[], yticks=[], title=str(group) if len(panels) > 1 else title)
    if len(panels) > 1:
        figure.suptitle(title)
    handles = [Line2D([], [], marker="o", linestyle="", markersize=4, color=_LABEL_COLOURS[int(i) % 20],
                      label=names[int(i)]) for i in np.unique(labels)]
    figure.legend(handles=handles, fontsize=7, loc="outside right center", frameon=False)
    save_figure(figure, path)


# ---- the report ------------------------------------------------------------------------------------------------------

def _best(runs: list[Run], task: str, key: str, better: Callable) -> Optional[Run]:
    pool = [r for r in runs if r.metrics["task"] == task and r.metrics["split"] == "paper" and key in r.metrics["mean"]]
    return better(pool, key=lambda r: (r.metrics["mean"][key], str(r.path))) if pool else None


def load_paper_predictions(path: Path) -> Optional[pd.DataFrame]:
    """The paper's out-of-fold size predictions (`true,pred`, 617 rows), when the file was fetched."""
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    if list(frame.columns[:2]) != ["true", "pred"]:
        raise ReportError(f"{path}: expected columns true,pred, got {', '.join(frame.columns)}")
    return frame


def same_rows(ours: pd.DataFrame, paper: pd.DataFrame) -> bool:
    """The paper's file has no IDs: the rows match when the measured sizes are the same multiset."""
    return len(ours) == len(paper) and np.allclose(np.sort(ours["true"]), np.sort(paper["true"]), atol=1e-6)


def embedding_run(runs: list[Run]) -> Optional[Run]:
    """Whose CLS embeddings the t-SNE shows: the best paper-split transformer shape run with fold checkpoints, else
    the best such size run."""
    # a run of an older version with a LightGBM blend (config key lgbm_blend) has checkpoints this code refuses
    pool = [r for r in runs if r.metrics["model"] == "transformer" and any(r.path.glob("*.pt"))
            and not r.config.get("lgbm_blend")]
    return _best(pool, "shape", "accuracy", max) or _best(pool, "size", "mae", min)


@dataclass(frozen=True)
class Embeddings:
    run: Run
    values: np.ndarray  # (N, d) out-of-fold CLS embeddings
    shapes: np.ndarray  # (N,) measured shape index
    folds: np.ndarray  # (N,) fold name


def load_embeddings(run: Run, data_dir: Path, feats_path: Path) -> Embeddings:
    from .descriptors import load_descriptors
    from .recipes import load_dataset
    from .runs import oof_embeddings
    from .splits import combined_table

    values, shapes, folds = oof_embeddings(run.path, combined_table(load_dataset(data_dir)),
                                           load_descriptors(feats_path))
    return Embeddings(run, values, shapes, folds)


@dataclass(frozen=True)
class Figure:
    file: str  # name in the assets folder
    caption: str


def make_figures(runs: list[Run], assets: Path, shapes: list[str], paper_predictions: Optional[pd.DataFrame],
                 embeddings: Optional[Embeddings] = None) -> dict[str, Figure]:
    """Draw what the runs allow: size parity (best paper-split size run), shape confusion (best paper-split shape run),
    the size intervals' calibration (best paper-split size run), leave-one-product-out bars, t-SNE of `embeddings`.
    Keys: size, shape, calibration, lopo, tsne."""
    figures = {}
    best_size = _best(runs, "size", "mae", min)
    if best_size is not None and (best_size.path / "oof_predictions.csv").is_file():
        ours = pd.read_csv(best_size.path / "oof_predictions.csv")
        paper = paper_predictions if paper_predictions is not None and same_rows(ours, paper_predictions) else None
        parity_plot(ours, best_size.label, paper, assets / "size_parity.png")
        note = "beside the paper's published out-of-fold predictions for the same 617 rows" if paper is not None \
            else "(the paper's predictions are not for the same rows, or not fetched: not shown)"
        figures["size"] = Figure("size_parity.png", f"Parity plot: {best_size.label} (paper split), {note}.")
    best_shape = _best(runs, "shape", "accuracy", max)
    if best_shape is not None and "confusion" in best_shape.metrics:
        confusion_plot(best_shape.metrics["confusion"], shapes, best_shape.label, assets / "shape_confusion.png")
        figures["shape"] = Figure("shape_confusion.png",
                                  f"Confusion matrix (out-of-fold, all folds, paper split): {best_shape.label}.")
    if best_size is not None and "uncertainty" in best_size.metrics:
        calibration_plot(best_size, assets / "size_calibration.png")
        figures["calibration"] = Figure(
            "size_calibration.png", f"Calibration of the size intervals: {best_size.label} (paper split). Each "
            "fold's intervals are calibrated on inner out-of-fold predictions of its training rows; the held-out "
            "rows are scored once.")
    lopo = [r for r in runs if r.metrics["split"] == "lopo" and r.metrics["task"] == "size"]
    if lopo:
        product_bars(lopo, assets / "lopo_products.png")
        figures["lopo"] = Figure("lopo_products.png", "Leave-one-product-out MAE per product.")
    if embeddings is not None:
        tsne_plot(embeddings.values, embeddings.shapes, shapes, assets / "tsne_cls.png", groups=embeddings.folds,
                  title=f"CLS embeddings: {embeddings.run.label}, {embeddings.run.metrics['task']} run")
        figures["tsne"] = Figure(
            "tsne_cls.png", f"t-SNE of the CLS embeddings (`{embeddings.run.path.name}`, paper split), coloured by "
            "measured shape, as the paper's Figure 3c: each fold's held-out recipes through that fold's model (first "
            "ensemble member), one map per fold, since every model has its own embedding space.")
    return figures


def render(runs: list[Run], figures: dict[str, Figure], assets: Path, document: Path, heading: bool = True) -> str:
    """The markdown text for `document` (figure links are relative to its folder); `heading=False` for a block
    that goes under the document's own "Results" heading (the README)."""
    def embed(key: str) -> list[str]:
        if key not in figures:
            return []
        target = Path(os.path.relpath(assets / figures[key].file, document.parent)).as_posix()
        return [f"![{figures[key].file}]({target})", "", figures[key].caption, ""]

    parts = ["## Results", ""] if heading else []
    parts += ["Generated by `python -m nanocrystal report` from the run folders' `metrics.json`: means over the "
              "folds, each fold scored once after selection on its training rows only. The paper's figures "
              "(arXiv 2412.10838) are in their own columns; theirs were selected on the validation folds.", ""]
    parts += ["### Size (nm; rows with 0 < size ≤ 20 nm and ≥ 300 particles counted)", "", size_table(runs), ""]
    parts += embed("size")
    parts += ["### Shape (accuracy over the 11 shapes; failed syntheses excluded)", "", shape_table(runs), ""]
    parts += embed("shape")
    if any("uncertainty" in run.metrics for run in runs):
        parts += ["### Uncertainty (conformal size intervals and shape sets; docs/uncertainty.md)", "",
                  uncertainty_table(runs), ""]
        parts += embed("calibration")
    if "tsne" in figures:
        parts += ["### Recipe embeddings", ""] + embed("tsne")
    if "lopo" in figures:
        parts += ["### Leave-one-product-out (size)", "", lopo_table(runs), ""] + embed("lopo")
    return "\n".join(parts).rstrip() + "\n"


def replace_block(document: str, block: str, source: str) -> str:
    """`document` with the text between the results markers replaced by `block`."""
    begin, end = document.find(README_BEGIN), document.find(README_END)
    if begin < 0 or end < begin:
        raise ReportError(f"{source}: needs the lines {README_BEGIN} and {README_END} around the results section")
    return document[:begin + len(README_BEGIN)] + "\n" + block + document[end:]


def report(run_dirs: list[str], out: Path, assets: Path, shapes_path: Path, paper_predictions_path: Path,
           readme: Optional[Path] = None, data_dir: Optional[Path] = None, feats_path: Optional[Path] = None) -> str:
    """Write `out` (and README's results block), figures into `assets`; return the text of `out`. The t-SNE needs
    the data (`data_dir`, `feats_path`) to embed the held-out rows again."""
    finished = [d for d in run_dirs if (Path(d) / "metrics.json").is_file()]
    for unfinished in sorted(set(run_dirs) - set(finished)):
        print(f"warning: {unfinished}: no metrics.json (unfinished run?), left out of the report", file=sys.stderr)
    runs = []
    for run in map(load_run, finished):
        reason = not_a_result(run)
        if reason:
            print(f"warning: {run.path}: {reason}, left out of the report", file=sys.stderr)
        else:
            runs.append(run)
    if not runs:
        raise ReportError("none of the run folders holds a finished result (metrics.json of every fold, held out)")
    shapes = [s.strip() for s in shapes_path.read_text().splitlines() if s.strip()] if shapes_path.is_file() \
        else [str(k) for k in range(11)]
    source = embedding_run(runs)
    embeddings = None
    if source is not None and data_dir is not None and feats_path is not None:
        if feats_path.is_file() and data_dir.is_dir():
            embeddings = load_embeddings(source, data_dir, feats_path)
        else:
            print(f"warning: {data_dir} or {feats_path} missing: no t-SNE of {source.path}", file=sys.stderr)
    figures = make_figures(runs, assets, shapes, load_paper_predictions(paper_predictions_path), embeddings)
    text = render(runs, figures, assets, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, text)
    if readme is not None:
        block = render(readme_runs(runs), figures, assets, readme, heading=False)
        write_text(readme, replace_block(readme.read_text(), block, str(readme)))
    return text
