"""Use trained run folders: predict size, shape and failure for new recipes, with an applicability flag.

Every model of a run is used: all fold checkpoints (`<fold>.pt`) and all their ensemble members. The size comes from the
size run (`size_nm` = mean over models, `size_std` = their spread); shape probabilities and `p_failed` from the shape
run (mean over models). Each task's heads are only trained in its own run, so a run is never asked for the other task.

Applicability: in each model's own representation (`RecipeModel.cls_embedding`) the distance from a recipe to
the nearest training recipe of that model's fold, divided by the model's threshold: the 99th percentile of the
training rows' leave-one-out nearest-neighbour distances. `domain_distance` is the mean of that ratio over a run's
models (the larger of the two runs when both are given); `in_domain` = domain_distance <= 1. The training rows are
rebuilt from the run's config (`make_folds` + `task_rows` on the outer fold's training rows; augmented rows are not
recipes anyone ran, so they are not part of the reference). Their embeddings are cached in the run folder
(`applicability.npz`, keyed by a hash of the config and checkpoints).

A representation can hide extrapolation (periodic embeddings of the numbers wrap around, layer norms saturate), so a
recipe is also out of domain when a condition or an amount lies beyond every training row of the run
(`outside_training` names those columns): in_domain = domain_distance <= 1 and nothing outside the training range.
"""
from __future__ import annotations

import hashlib
import re
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from sklearn.neighbors import NearestNeighbors

from .config import Config, ConfigError
from .convert import convert_file
from .correction import SeriesCorrection
from .descriptors import INTERMEDIATE_SEPARATOR, load_descriptors
from .encode import Encoder, encode, unknown_substances
from .engine import predict as model_predict
from .errors import InputError
from .files import write_atomic
from .progress import Progress
from .recipes import (AMOUNT_COLUMNS, CONDITION_COLUMNS, EMPTY_NAME, LABEL_COLUMNS, NAME_COLUMNS, PRODUCT_AMOUNT,
                      PRODUCT_NAME, SHAPES_FILE, UNKNOWN, RecipeError, load_dataset, load_shapes, read_csv_raw,
                      read_frame)
from .runs import NEURAL_MODELS, CheckpointError, blend, load_fold_models, neural_spread
from .splits import combined_table, run_folds, task_rows
from .substances import chemistry_of, is_table, merged_substances, new_substance_vectors, rename_substance
from .uncertainty import FoldCalibration, ShapeCalibration, SizeCalibration, set_labels, shift_quantile

if TYPE_CHECKING:  # LightGBM is imported only when a run has a blend (runs.load_fold_models)
    from .baselines import TreeBlend

CACHE_FILE = "applicability.npz"
CACHE_VERSION = "5"  # change when the reference computation changes: old caches are then recomputed
THRESHOLD_PERCENTILE = 99.0
EMBED_BATCH = 2048
LARGE_BATCH_ROWS = 2000  # recipes from which prediction shows a progress bar
WARNING_COLUMN = "warning"
# columns predict/design write: a prediction file can be fed back as recipes
OUTSIDE_COLUMN = "outside_training"
IMPUTED_COLUMN = "imputed"
OUTPUT_COLUMNS = ("product", "size_nm", "size_lo", "size_hi", "seen_series", "p_within", "size_std", "shape",
                  "shape_set", "p_failed", "domain_distance", OUTSIDE_COLUMN, "in_domain", IMPUTED_COLUMN,
                  WARNING_COLUMN, "loss")
DEFAULT_CONFIDENCE = 0.9
NEW_PRODUCT = "product (no training recipe makes it)"
PROB_PREFIX = "prob_"


class PredictError(InputError, ValueError):
    pass


# ---- reading recipes to predict ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipes:
    table: pd.DataFrame  # recipes.finish form
    lines: np.ndarray  # row number in the source file (CSV: file line with header = 1; xlsx: sheet row)
    source: str


def prepare_raw(raw: pd.DataFrame) -> pd.DataFrame:
    """A recipe CSV as a user writes it. Label columns (Num, Y1, Y2, Y3) may be absent or empty: unknown (-1). A slot
    whose amount and name columns are both absent is empty. ID may be absent: the file line. Prediction columns of an
    earlier predict/design output are ignored, so its output can be read back."""
    frame = raw.drop(columns=[c for c in raw.columns if c in OUTPUT_COLUMNS or c.startswith(PROB_PREFIX)])
    for column in LABEL_COLUMNS:
        values = frame[column] if column in frame.columns else pd.Series("", index=frame.index)
        frame[column] = values.where(values.str.strip() != "", str(UNKNOWN))
    for amount, name in zip(AMOUNT_COLUMNS, NAME_COLUMNS):
        if amount not in frame.columns and name not in frame.columns:
            frame[amount], frame[name] = "0", EMPTY_NAME
    if "ID" not in frame.columns:
        frame.insert(0, "ID", (frame.index.to_numpy() + 2).astype(str))
    return frame


def read_recipes(path: str | Path, shapes: list[str]) -> Recipes:
    """The model CSV or the human-readable xlsx layout (labels optional). Raises RecipeError listing every problem."""
    path = Path(path)
    if path.suffix.lower() == ".xlsx":
        result = convert_file(path, shapes, labels=False)
        if len(result.drops):
            raise RecipeError([f"{path}:{r.row}:{r.column}: {r.reason} ({r.value!r})"
                               for r in result.drops.itertuples()])
        return Recipes(result.table, result.table["ID"].to_numpy(), str(path))
    raw = read_csv_raw(path)
    table = read_frame(raw, str(path), len(shapes), prepare_raw)
    return Recipes(table, raw.index.to_numpy() + 2, str(path))


# ---- runs ------------------------------------------------------------------------------------------------------------

@dataclass
class Reference:
    """One model's training recipes in its own representation."""
    neighbours: NearestNeighbors
    threshold: float


@dataclass
class FoldModels:
    name: str
    encoder: Encoder
    members: list[torch.nn.Module]
    references: list[Reference]  # one per member
    trees: TreeBlend | None  # the fold's tree models (--tree_blend runs)
    correction: SeriesCorrection | None  # --series_correction runs
    calibration: FoldCalibration | None  # its conformal calibration (None: a run with --calibration_folds 0)


@dataclass
class Run:
    path: Path
    cfg: Config
    folds: list[FoldModels]
    low: np.ndarray  # training_range: smallest value of each condition, then of any reagent amount
    high: np.ndarray
    products: frozenset[str]  # the products of its training recipes
    write_cache: bool = True  # false: the folder is only read (the app)
    shifts: np.ndarray | None = None  # |log size shift| of a substance made new (substance_shifts), once needed


def training_positions(cfg: Config, table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each fold's training rows of the run's task, in the combined table (outer folds, no augmentation)."""
    folds = run_folds(cfg, table)
    return {f.name: task_rows(table, f.train, cfg.task, cfg.use_weak, cfg.use_large, cfg.use_failures) for f in folds}


@torch.no_grad()
def embed(model: torch.nn.Module, table: pd.DataFrame, encoder: Encoder) -> np.ndarray:
    batch = encode(table, encoder)
    return torch.cat([model.cls_embedding(chunk) for chunk in batch.chunks(EMBED_BATCH)]).numpy()


def training_range(train: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest value of each condition, then of any reagent amount, in the training rows."""
    amounts = train[list(AMOUNT_COLUMNS)].to_numpy(float)
    amounts = amounts[amounts > 0]
    conditions = train[list(CONDITION_COLUMNS)]
    return (np.append(conditions.min().to_numpy(float), amounts.min()),
            np.append(conditions.max().to_numpy(float), amounts.max()))


def outside_range(table: pd.DataFrame, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(N, conditions + amount slots) bool: the condition, or the amount of a used slot, lies beyond every training
    row."""
    values = table[[*CONDITION_COLUMNS, *AMOUNT_COLUMNS]].to_numpy(float)
    n_conditions = len(CONDITION_COLUMNS)
    repeat = [1] * n_conditions + [len(AMOUNT_COLUMNS)]  # every slot shares the amount range
    used = np.concatenate([np.ones((len(table), n_conditions), bool), values[:, n_conditions:] > 0], axis=1)
    return used & ((values < np.repeat(low, repeat)) | (values > np.repeat(high, repeat)))


def outside_labels(table: pd.DataFrame, outside: np.ndarray) -> list[str]:
    """Per row: the conditions and the substances (by name) whose values lie beyond the training range."""
    names = np.concatenate([np.tile(np.array(CONDITION_COLUMNS, dtype=object), (len(table), 1)),
                            table[list(NAME_COLUMNS)].to_numpy(object) + " amount"], axis=1)
    return [", ".join(row_names[row]) for row_names, row in zip(names, outside)]


def loo_threshold(embeddings: np.ndarray) -> float:
    """99th percentile of the training rows' leave-one-out nearest-neighbour distances."""
    # the second neighbour of a training row is its nearest other row (the first is itself or an exact duplicate)
    loo = NearestNeighbors(n_neighbors=2).fit(embeddings).kneighbors(embeddings)[0][:, 1]
    return max(float(np.percentile(loo, THRESHOLD_PERCENTILE)), 1e-12)


def run_fingerprint(run_dir: Path, checkpoints: list[Path]) -> str:
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for path in [run_dir / "config.json", *checkpoints]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_cache(path: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cache:
            if str(cache["fingerprint"]) != fingerprint:
                return None
            return {k: cache[k] for k in cache.files if k != "fingerprint"}
    except (OSError, ValueError, KeyError):  # unreadable or half-old cache: recompute
        return None


def save_cache(path: Path, fingerprint: str, arrays: dict[str, np.ndarray]) -> None:
    """Atomic write; a read-only run folder just means recomputing next time."""
    def write(temp: Path) -> None:
        with open(temp, "wb") as out:  # a file object: np.savez would add .npz to a name
            np.savez(out, fingerprint=np.array(fingerprint), **arrays)
    try:
        write_atomic(path, write)
    except OSError:
        return


def reference_arrays(run_dir: Path, cfg: Config, loaded: dict, write_cache: bool = True) -> dict[str, np.ndarray]:
    """`<fold>__<member>`: embeddings of that fold's training rows, and `<fold>__<member>__threshold`; from the cache,
    or computed (and cached unless write_cache is false)."""
    fingerprint = run_fingerprint(run_dir, [run_dir / f"{name}.pt" for name in loaded])
    cache_path = run_dir / CACHE_FILE
    cached = load_cache(cache_path, fingerprint)
    if cached is not None:
        return cached
    table = combined_table(load_dataset(cfg.data_dir))
    positions = training_positions(cfg, table)
    train_all = table.iloc[np.unique(np.concatenate(list(positions.values())))]
    low, high = training_range(train_all)
    arrays = {"range_low": low, "range_high": high, "products": np.array(sorted(set(train_all[PRODUCT_NAME])), str)}
    for name, (encoder, members) in loaded.items():
        if name not in positions:
            raise PredictError(f"{run_dir / name}.pt: no fold {name!r} in the run's split")
        train = table.iloc[positions[name]].reset_index(drop=True)
        for k, member in enumerate(members):
            key = f"{name}__{k}"
            arrays[key] = embed(member, train, encoder)
            arrays[f"{key}__threshold"] = np.array(loo_threshold(arrays[key]))
    if write_cache:
        save_cache(cache_path, fingerprint, arrays)
    return arrays


def run_config(run_dir: Path) -> Config:
    """The config of a run folder that predict can use (a neural run with fold checkpoints); PredictError if not."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise PredictError(f"{run_dir}: not a run folder (no config.json)")
    try:
        cfg = Config.load(config_path)
    except ConfigError as error:  # names the file and each bad key
        raise PredictError(str(error)) from None
    if cfg.model not in NEURAL_MODELS:
        raise PredictError(f"{run_dir}: a {cfg.model} run; predict needs a neural run ({', '.join(NEURAL_MODELS)}: "
                           "fold checkpoints)")
    if not any(run_dir.glob("*.pt")):
        raise PredictError(f"{run_dir}: no fold checkpoints (*.pt); is the run finished?")
    return cfg


def load_run(path: str | Path, write_cache: bool = True) -> Run:
    """Every fold checkpoint of a run folder, with its applicability reference. With write_cache false the folder is
    only read (the app): a missing or stale applicability cache is computed in memory."""
    run_dir = Path(path)
    cfg = run_config(run_dir)
    checkpoints = sorted(run_dir.glob("*.pt"))
    store = load_descriptors(cfg.feats_path) if is_table(cfg.descriptors) else None  # else in the checkpoints
    loaded = {}
    for checkpoint in checkpoints:
        try:
            saved = load_fold_models(checkpoint, store)
        except CheckpointError as error:  # names the file and what to do
            raise PredictError(str(error)) from None
        loaded[checkpoint.stem] = saved
    arrays = reference_arrays(run_dir, cfg, {name: (saved.encoder, saved.members) for name, saved in loaded.items()},
                              write_cache)
    folds = [FoldModels(name, saved.encoder, saved.members,
                        [Reference(NearestNeighbors(n_neighbors=1).fit(arrays[f"{name}__{k}"]),
                                   float(arrays[f"{name}__{k}__threshold"])) for k in range(len(saved.members))],
                        saved.trees, saved.correction, saved.calibration)
             for name, saved in loaded.items()]
    return Run(run_dir, cfg, folds, arrays["range_low"], arrays["range_high"], frozenset(arrays["products"].tolist()),
               write_cache)


# ---- prediction ------------------------------------------------------------------------------------------------------

@dataclass
class RunOutput:
    per_model: list[dict[str, np.ndarray]]  # engine.predict of every model (fold x member)
    domain_distance: np.ndarray  # mean over models of nearest-training distance / threshold
    outside: np.ndarray  # (N, conditions + amount slots) beyond the run's training range
    seen: np.ndarray | None  # size runs: the recipe's series has training rows (in any fold)
    sigma: np.ndarray | None  # size runs: the interval's difficulty, the mean of the folds' (None: not calibrated)


@torch.no_grad()
def run_outputs(run: Run, table: pd.DataFrame) -> RunOutput:
    per_model, ratios, seen, sigmas = [], [], [], []
    # a bar for a large file; none for the small batches design predicts many times
    progress = Progress(len(run.folds), f"{run.path.name}: {len(table):,} recipes", unit="folds",
                        bar=None if len(table) >= LARGE_BATCH_ROWS else False)
    for fold in progress.iterate(run.folds):
        batch = encode(table, fold.encoder)
        fold_models = fold_outputs(run.cfg, fold, table, batch)
        for member, reference in zip(fold.members, fold.references):
            distance = reference.neighbours.kneighbors(member.cls_embedding(batch).numpy(), n_neighbors=1)[0][:, 0]
            ratios.append(distance / reference.threshold)
        per_model += fold_models
        if run.cfg.task == "size" and fold.calibration is not None:
            # the spread of the models the fold was calibrated with: its trees, else its members
            spread = (fold.trees.log_spread(table) if fold.trees is not None else
                      neural_spread({"size": np.mean([m["size"] for m in fold_models], axis=0),
                                     "size_std": np.std([m["size"] for m in fold_models], axis=0)}))
            fold_seen, fold_sigma = fold.calibration.size_difficulty(table, spread)
            seen.append(fold_seen)
            sigmas.append(fold_sigma)
    calibrated = run.cfg.task == "size" and len(sigmas) == len(run.folds)
    return RunOutput(per_model, np.mean(ratios, axis=0), outside_range(table, run.low, run.high),
                     np.any(seen, axis=0) if calibrated else None, np.mean(sigmas, axis=0) if calibrated else None)


@torch.no_grad()
def fold_outputs(cfg: Config, fold: FoldModels, table: pd.DataFrame, batch=None) -> list[dict[str, np.ndarray]]:
    """engine.predict of each member of a fold, blended with the fold's trees and corrected as in training: the
    members' mean is the fold's prediction."""
    batch = encode(table, fold.encoder) if batch is None else batch
    trees = None if fold.trees is None else fold.trees.predict(table)
    factors = None if fold.correction is None else fold.correction.factors(table)
    outputs = []
    for member in fold.members:
        prediction = model_predict(member, batch)
        prediction = prediction if trees is None else blend(cfg, prediction, trees)
        outputs.append(prediction if factors is None else {**prediction, "size": prediction["size"] * factors})
    return outputs


def shape_column(name: str) -> str:
    return PROB_PREFIX + name.replace(" ", "_")


@dataclass
class Predictor:
    size: Run
    shape: Run | None
    shapes: list[str]
    imputed: frozenset[str] = field(default_factory=frozenset)  # substances given by formula or SMILES (with_substances)

    def encoders(self) -> list[Encoder]:
        return [run.folds[0].encoder for run in (self.size, self.shape) if run is not None]

    def unknown(self, table: pd.DataFrame) -> pd.DataFrame:
        """One row per cell naming a substance without a descriptor: position, column, name."""
        names = set()
        for encoder in self.encoders():
            names |= set(unknown_substances(table, encoder))
        columns = list(NAME_COLUMNS) + ([PRODUCT_NAME] if any(e.use_product for e in self.encoders()) else [])
        cells = table[columns].isin(names).to_numpy()
        rows, cols = np.nonzero(cells)
        return pd.DataFrame({"position": rows, "column": np.array(columns)[cols],
                             "name": table[columns].to_numpy()[rows, cols]})

    @property
    def size_calibration(self) -> SizeCalibration | None:
        """The size run's folds' calibrations pooled (their ensemble predicts); None when a fold has none."""
        folds = [fold.calibration for fold in self.size.folds]
        return None if any(c is None for c in folds) else SizeCalibration.pool([c.size for c in folds])

    @property
    def shape_calibration(self) -> ShapeCalibration | None:
        folds = [] if self.shape is None else [fold.calibration for fold in self.shape.folds]
        return None if not folds or any(c is None for c in folds) else ShapeCalibration.pool([c.shape for c in folds])

    def predict(self, table: pd.DataFrame, confidence: float = DEFAULT_CONFIDENCE,
                within: tuple[float, float] | None = None) -> pd.DataFrame:
        """Predictions for every row of a recipe table (recipes.finish form); unknown substances count as zeros.
        `size_lo`..`size_hi` is the conformal interval at `confidence` (NaN for a run without calibration);
        `size_std` the spread of the ensemble's models (not an interval). `within=(target_nm, tolerance_nm)` adds
        `p_within`, the probability that the size lands within the tolerance of the target."""
        if not 0 < confidence < 1:
            raise PredictError(f"--confidence {confidence:g}: must be between 0 and 1")
        size = run_outputs(self.size, table)
        sizes = np.array([p["size"] for p in size.per_model])
        out = pd.DataFrame({"size_nm": sizes.mean(0)}, index=table.index)
        calibration = self.size_calibration if size.sigma is not None else None
        imputed = imputed_labels(table, self.imputed)
        sigma = size.sigma
        if calibration is not None and any(imputed):  # a new substance: the interval also holds its shift
            new = np.array([bool(names) for names in imputed])
            shift = np.where(new, shift_quantile(self.size.shifts, confidence), 0.0)
            sigma = calibration.widen(out["size_nm"].to_numpy(), sigma, size.seen, confidence, shift)
        if calibration is not None:
            out["size_lo"], out["size_hi"] = calibration.interval(out["size_nm"].to_numpy(), sigma, size.seen,
                                                                  confidence)
            out["seen_series"] = size.seen
        else:
            out["size_lo"] = out["size_hi"] = np.nan
        if within is not None:
            out["p_within"] = (np.nan if calibration is None else
                               calibration.p_within(out["size_nm"].to_numpy(), sigma, size.seen, *within))
        out["size_std"] = sizes.std(0)
        distance, outside = size.domain_distance, size.outside
        if self.shape is not None:
            shape_input = table
            if self.shape.cfg.size_as_input:  # the shape model reads a measured size: give it the predicted one
                shape_input = table.assign(Y1=out["size_nm"].to_numpy())
            shape = run_outputs(self.shape, shape_input)
            probabilities = np.mean([p["shape"] for p in shape.per_model], axis=0)
            out["shape"] = np.array(self.shapes)[probabilities.argmax(1)]
            shape_calibration = self.shape_calibration
            out["shape_set"] = ("" if shape_calibration is None else
                                set_labels(shape_calibration.sets(probabilities, confidence), probabilities,
                                           self.shapes))
            for k, name in enumerate(self.shapes):
                out[shape_column(name)] = probabilities[:, k]
            out["p_failed"] = np.mean([p["failed"] for p in shape.per_model], axis=0)
            distance, outside = np.maximum(distance, shape.domain_distance), outside | shape.outside
        out["domain_distance"] = distance
        # a product no training recipe makes: its intervals are calibrated on products the model has seen
        new_product = ~table[PRODUCT_NAME].isin(self.size.products).to_numpy()
        out[OUTSIDE_COLUMN] = [", ".join(filter(None, [label, NEW_PRODUCT if new else "", *(
                                   f"{name} (new substance)" for name in names.split(", ") if name)]))
                               for label, new, names in zip(outside_labels(table, outside), new_product, imputed)]
        out["in_domain"] = (distance <= 1.0) & ~outside.any(1) & ~new_product & (np.array(imputed) == "")
        out[IMPUTED_COLUMN] = imputed
        return out

    def with_substances(self, table: pd.DataFrame, substances: pd.DataFrame | None = None) -> "Predictor":
        """This predictor with a vector for every substance of `table` its runs lack that substances.csv or
        `substances` (same columns) describe by formula or SMILES: imputed into the table's space for a table run,
        computed by the run's providers otherwise (substances.new_substance_vectors). The size run's substance shifts
        (the interval's widening) are computed then, once per run."""
        names = sorted(set(self.unknown(table)["name"]))
        described = merged_substances(substances)
        described = described[described["name"].isin(names)]
        if described.empty:
            return self
        if self.size.shifts is None and self.size_calibration is not None:  # kept on the loaded run: once per run
            self.size.shifts = load_shifts(self.size)
        size, shape = (None if run is None else
                       extend_run(run, new_substance_vectors(run.cfg.descriptors, run.cfg.feats_path,
                                                             described["name"].tolist(), described),
                                  chemistry_of(described))
                       for run in (self.size, self.shape))
        return replace(self, size=size, shape=shape, imputed=self.imputed | frozenset(described["name"]))


def load_predictor(size_run: str | Path, shape_run: str | Path | None = None, write_cache: bool = True) -> Predictor:
    size = load_run(size_run, write_cache)
    if size.cfg.task != "size":
        raise PredictError(f"{size_run}: --size-run is a {size.cfg.task} run")
    shape = load_run(shape_run, write_cache) if shape_run else None
    if shape is not None and shape.cfg.task != "shape":
        raise PredictError(f"{shape_run}: --shape-run is a {shape.cfg.task} run")
    return Predictor(size, shape, load_shapes(Path(size.cfg.data_dir) / SHAPES_FILE))


def unknown_problems(recipes: Recipes, unknown: pd.DataFrame) -> list[str]:
    return [f"{recipes.source}:{recipes.lines[u.position]}:{u.column}: substance {u.name!r} has no descriptor "
            f"(give its formula or SMILES with --substances FILE, or --allow-unknown uses zeros)"
            for u in unknown.sort_values("position", kind="stable").itertuples()]


# ---- substances the runs never trained on ---------------------------------------------------------------------------

SHIFTS_FILE = "substance_shifts.npz"
SHIFT_SUBSTANCES = 30  # the most frequent reagents of each fold's training rows that substances.csv describes
SHIFT_ROWS = 40  # training rows per substance and fold (a seeded sample)
NEW_SUFFIX = " (as new)"


def extend_run(run: Run, vectors: dict[str, np.ndarray], chemistry: dict[str, tuple[str, str]] | None = None) -> Run:
    """A copy of the run whose folds know `vectors`' substances: appended to each encoder's vocabulary, each member's
    descriptor table (model.add_substances) and each tree model's store, and their (formula, kind) `chemistry` to
    the tree models' chemistry columns. The run itself is unchanged."""
    names = [n for n in vectors if n not in run.folds[0].encoder.vocabulary]
    if not names:
        return run
    rows = torch.from_numpy(np.stack([vectors[n] for n in names]).astype(np.float32))
    folds = []
    for fold in run.folds:
        members = [deepcopy(member) for member in fold.members]
        for member in members:
            member.add_substances(rows)
        trees = (None if fold.trees is None else
                 fold.trees.with_substances(dict(zip(names, rows.numpy())), chemistry))
        folds.append(replace(fold, encoder=fold.encoder.with_substances(names), members=members, trees=trees))
    return replace(run, folds=folds)


def imputed_labels(table: pd.DataFrame, imputed: frozenset[str]) -> list[str]:
    """Per row: the substances of `imputed` it uses, comma-separated ('' for none)."""
    names = table[[*NAME_COLUMNS, PRODUCT_NAME]].to_numpy(object)
    return [", ".join(sorted(set(row) & imputed)) for row in names]


def substance_shifts(run: Run) -> np.ndarray:
    """How far a prediction moves when a substance becomes new to the model, measured on the run's training rows
    (no label is read): for each of the SHIFT_SUBSTANCES most frequent reagents of each fold's training rows, up to
    SHIFT_ROWS of those rows are predicted by the fold as trained and with the substance renamed and given the
    vector a new substance gets (imputed by a regression fitted without it, or computed by the run's providers):
    |log(size new / size trained)| of every such row."""
    table = combined_table(load_dataset(run.cfg.data_dir))
    positions = training_positions(run.cfg, table)
    described = merged_substances()
    shifts = []
    for fold in run.folds:
        train = table.iloc[positions[fold.name]]
        names = pd.Series(train[list(NAME_COLUMNS)].to_numpy().ravel()).value_counts().index
        frequent = [n for n in names if n in set(described["name"])][:SHIFT_SUBSTANCES]
        trained_rows, renamed_rows, vectors, chemistry = [], [], {}, {}
        for name in frequent:  # each sampled row gets one substance renamed; one prediction per fold for them all
            rows = train[(train[list(NAME_COLUMNS)] == name).any(axis=1)]
            rows = rows.sample(min(SHIFT_ROWS, len(rows)), random_state=0)
            new = name + NEW_SUFFIX
            as_new = described[described["name"] == name].assign(name=new)
            vectors |= new_substance_vectors(run.cfg.descriptors, run.cfg.feats_path, [new], as_new,
                                             leave_out=(name,))
            chemistry |= chemistry_of(as_new)
            trained_rows.append(rows)
            renamed_rows.append(rename_substance(rows, name, new))
        (moved,) = extend_run(replace(run, folds=[fold]), vectors, chemistry).folds
        trained = np.mean([p["size"] for p in fold_outputs(run.cfg, fold, pd.concat(trained_rows))], axis=0)
        renamed = np.mean([p["size"] for p in fold_outputs(run.cfg, moved, pd.concat(renamed_rows))], axis=0)
        shifts.append(np.abs(np.log(renamed / trained)))
    return np.concatenate(shifts)


def load_shifts(run: Run) -> np.ndarray:
    """substance_shifts from the run folder's cache, or computed (and cached unless the run is only read)."""
    checkpoints = [run.path / f"{fold.name}.pt" for fold in run.folds]
    fingerprint = run_fingerprint(run.path, checkpoints)
    cached = load_cache(run.path / SHIFTS_FILE, fingerprint)
    if cached is not None:
        return cached["shifts"]
    shifts = substance_shifts(run)
    if run.write_cache:
        save_cache(run.path / SHIFTS_FILE, fingerprint, {"shifts": shifts})
    return shifts


def predict_recipes(predictor: Predictor, recipes: Recipes, allow_unknown: bool = False,
                    confidence: float = DEFAULT_CONFIDENCE, substances: pd.DataFrame | None = None) -> pd.DataFrame:
    """The prediction table for a recipe file: ID, product, predictions (+ a warning column with allow_unknown).
    A substance the runs lack gets a vector when substances.csv or `substances` describe it (`imputed` names it per
    row; Predictor.with_substances). Raises RecipeError naming each other unknown substance and row unless
    allow_unknown."""
    table = recipes.table
    predictor = predictor.with_substances(table, substances)
    if not allow_unknown:
        check_known(predictor, recipes)
    out = pd.concat([pd.DataFrame({"ID": table["ID"], "product": table[PRODUCT_NAME]}),
                     predictor.predict(table, confidence)], axis=1)
    if allow_unknown:
        missing = predictor.unknown(table).groupby("position")["name"].agg(lambda n: ", ".join(sorted(set(n))))
        out[WARNING_COLUMN] = ("no descriptor (used as zeros): " + missing).reindex(out.index).fillna("")
        out["in_domain"] &= out[WARNING_COLUMN] == ""  # a zero descriptor is no substance the model has seen
    return out


def check_known(predictor: Predictor, recipes: Recipes) -> None:
    """Raise RecipeError naming each substance without a descriptor, by row and column."""
    unknown = predictor.unknown(recipes.table)
    if len(unknown):
        raise RecipeError(unknown_problems(recipes, unknown))


def summary(frame: pd.DataFrame, leading: list[str] = ()) -> str:
    """The columns a reader scans first, rounded; the CSV keeps everything."""
    view = frame[["ID", *(["product"] if "product" in frame else []), *leading]].copy()
    view = view.round({c: 3 for c in view.columns if c.startswith(PROB_PREFIX)})
    for column in ("size_nm", "size_lo", "size_hi", "size_std"):
        view[column] = frame[column].round(2)
    if "seen_series" in frame:
        view["seen_series"] = frame["seen_series"]
    if "p_within" in frame:
        view["p_within"] = frame["p_within"].round(3)
    if "shape" in frame:
        probabilities = frame[[c for c in frame.columns if c.startswith(PROB_PREFIX)]].to_numpy()
        view["shape"] = frame["shape"]
        view["p_shape"] = probabilities.max(1).round(3)
        view["shape_set"] = frame["shape_set"]
        view["p_failed"] = frame["p_failed"].round(3)
    view["domain_distance"] = frame["domain_distance"].round(2)
    view[OUTSIDE_COLUMN] = frame[OUTSIDE_COLUMN]
    view["in_domain"] = frame["in_domain"]
    for column in ("loss", WARNING_COLUMN):
        if column in frame:
            view[column] = frame[column].round(3) if column == "loss" else frame[column]
    return view.to_string(index=False)


def legend(frame: pd.DataFrame, confidence: float) -> str:
    """What the interval columns of `summary` mean, printed under it."""
    if frame["size_lo"].isna().all():
        return ("size_lo/size_hi: none, the size run has no calibration (trained with --calibration_folds 0); "
                "size_std: spread of the ensemble's models, not an interval")
    sets = f"; shape_set: the shapes a {confidence:.0%} prediction set keeps" if "shape_set" in frame else ""
    return (f"size_lo..size_hi: the {confidence:.0%} conformal interval of the size (wider for a recipe whose series "
            f"has no training recipe: seen_series false){sets}; size_std: spread of the ensemble's models, not an "
            "interval")


# ---- what the app shows beside a prediction ---------------------------------------------------------------------------

FORM_SOURCE = "form"
# a form's fields in words, for messages about a recipe entered by hand (the model columns are upstream's codes)
FIELD_LABELS = {"Temperature1": "injection temperature", "Temperature2": "reaction temperature",
                "Speed": "heating rate", "Time": "time", PRODUCT_NAME: "product", PRODUCT_AMOUNT: "product amount",
                **{a: f"amount of substance {k + 1}" for k, a in enumerate(AMOUNT_COLUMNS)},
                **{n: f"substance {k + 1}" for k, n in enumerate(NAME_COLUMNS)}}
FAILED_SHAPE = "failed"


def form_problem(problem: str) -> str:
    """`form:<line>:<column>: message` (validate_frame's wording) -> `<field>: message`, column codes in words."""
    _, _, column, message = problem.split(":", 3)
    message = re.sub(r"\b[A-M][12]\b", lambda code: FIELD_LABELS[code.group()], message.strip())
    return f"{FIELD_LABELS.get(column, column)}: {message}"


def recipe_table(product: str, substances: list[tuple[str, float]], temperature1: float, temperature2: float,
                 time_min: float, heating_rate: float, n_shapes: int) -> pd.DataFrame:
    """One recipe entered in a form: (substance, amount mmol) pairs in slot order (an empty name with amount 0 is an
    unused slot). Validated as a recipe file; RecipeError names the form's fields in words."""
    if len(substances) > len(AMOUNT_COLUMNS):
        raise RecipeError([f"at most {len(AMOUNT_COLUMNS)} substances, got {len(substances)}"])
    raw = {PRODUCT_NAME: product, PRODUCT_AMOUNT: "1", "Temperature1": repr(float(temperature1)),
           "Temperature2": repr(float(temperature2)), "Time": repr(float(time_min)),
           "Speed": repr(float(heating_rate))}
    for (name, amount), amount_column, name_column in zip(substances, AMOUNT_COLUMNS, NAME_COLUMNS):
        raw[amount_column], raw[name_column] = repr(float(amount)), name
    try:
        return read_frame(pd.DataFrame([raw], dtype=str), FORM_SOURCE, n_shapes, prepare_raw)
    except RecipeError as error:
        raise RecipeError([form_problem(p) for p in error.problems]) from None


def known_substances(predictor: Predictor) -> list[str]:
    """The descriptor table's names a recipe may use, reaction intermediates (`A@B`, made by augment) left out."""
    names = set(predictor.encoders()[0].vocabulary) - {EMPTY_NAME}
    return sorted(n for n in names if INTERMEDIATE_SEPARATOR not in n)


@dataclass(frozen=True)
class TrainingRecipes:
    """The dataset as a run saw it: the combined table (recipes, then failed syntheses) and each fold's training rows."""
    table: pd.DataFrame
    positions: dict[str, np.ndarray]  # fold name -> positions in `table`
    shapes: list[str]

    @property
    def rows(self) -> pd.DataFrame:
        """Every row some fold trained on."""
        return self.table.iloc[np.unique(np.concatenate(list(self.positions.values())))]

    def products(self) -> list[str]:
        """The products of the dataset's recipes (failed syntheses often name none)."""
        return sorted(set(self.table.loc[~self.table["failed"], PRODUCT_NAME]))


def training_recipes(run: Run) -> TrainingRecipes:
    table = combined_table(load_dataset(run.cfg.data_dir))
    return TrainingRecipes(table, training_positions(run.cfg, table), load_shapes(Path(run.cfg.data_dir) / SHAPES_FILE))


def measured(table: pd.DataFrame, shapes: list[str]) -> pd.DataFrame:
    """The labels of dataset rows in words: product, measured size (NaN when unknown), shape name ('failed' for a
    failed synthesis, '' when unknown), particles counted (Num; at least 300 is a solid size label)."""
    names = np.array([*shapes, FAILED_SHAPE, ""], dtype=object)  # index -1 (unknown) picks the last
    size = table["Y1"].where(table["Y1"] > 0)
    return pd.DataFrame({"product": table[PRODUCT_NAME], "measured_size_nm": size,
                         "measured_shape": names[table["Y3"].to_numpy()], "particles_counted": table["Num"]},
                        index=table.index)


def reagents_text(table: pd.DataFrame) -> list[str]:
    """Per row: the used substances with their amounts, e.g. `PbO 4, Se 4, ODE 40` (mmol)."""
    names, amounts = table[list(NAME_COLUMNS)].to_numpy(object), table[list(AMOUNT_COLUMNS)].to_numpy(float)
    return [", ".join(f"{n} {a:g}" for n, a in zip(row_names, row_amounts) if n != EMPTY_NAME)
            for row_names, row_amounts in zip(names, amounts)]


@torch.no_grad()
def nearest_training(run: Run, training: TrainingRecipes, table: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """For each recipe (`recipe`: its position in `table`), the k training recipes nearest to it in the run's own
    representations, as the applicability check measures them, with each fold's first model (its members learnt the
    same rows; one answers a page in a fraction of the time): a training row's `distance` is its smallest distance
    over those models, in units of the model's threshold."""
    found = []
    for fold in run.folds:
        member, reference = fold.members[0], fold.references[0]
        distance, index = reference.neighbours.kneighbors(member.cls_embedding(encode(table, fold.encoder)).numpy(),
                                                          n_neighbors=k)
        found.append(pd.DataFrame({"recipe": np.repeat(np.arange(len(table)), k),
                                   "row": training.positions[fold.name][index.ravel()],
                                   "distance": distance.ravel() / reference.threshold}))
    nearest = (pd.concat(found).groupby(["recipe", "row"], as_index=False)["distance"].min()
               .sort_values(["recipe", "distance"], kind="stable").groupby("recipe").head(k))
    rows = training.table.iloc[nearest["row"].to_numpy()]
    labels = measured(rows, training.shapes)
    return pd.DataFrame({"recipe": nearest["recipe"].to_numpy(), "distance": nearest["distance"].to_numpy(),
                         "ID": rows["ID"].to_numpy(), "product": rows[PRODUCT_NAME].to_numpy(),
                         **{c: rows[c].to_numpy() for c in CONDITION_COLUMNS}, "reagents": reagents_text(rows),
                         **{c: labels[c].to_numpy() for c in ("measured_size_nm", "measured_shape",
                                                              "particles_counted")}})


def product_overview(training: TrainingRecipes) -> pd.DataFrame:
    """The dataset by product, most recipes first: recipes, failed syntheses naming it, recipes with a measured size,
    their median size, then the count of each measured shape."""
    labels = measured(training.table, training.shapes)
    failed = labels["measured_shape"] == FAILED_SHAPE
    recipes = labels[~failed]
    by_product = recipes.groupby("product")
    overview = pd.DataFrame({
        "recipes": by_product.size(),
        "failed_syntheses": labels[failed].groupby("product").size().reindex(by_product.size().index, fill_value=0),
        "with_size": by_product["measured_size_nm"].count(),
        "median_size_nm": by_product["measured_size_nm"].median(),
    })
    shapes = pd.crosstab(recipes["product"], recipes["measured_shape"]).reindex(columns=training.shapes, fill_value=0)
    overview = overview.join(shapes).sort_values("recipes", ascending=False, kind="stable")
    return overview.rename_axis("product").reset_index()


def newest_run(runs_dir: str | Path, task: str) -> Path | None:
    """The newest finished run (metrics.json) of a task that predict can use, with fold<k>.pt checkpoints (not a
    leave-one-product-out run); for shape, a recipe-only run (no --size_as_input). None when there is none."""
    found = []
    for metrics in Path(runs_dir).glob("*/metrics.json"):
        run_dir = metrics.parent
        try:
            cfg = run_config(run_dir)
        except PredictError:
            continue
        if cfg.task == task and not cfg.size_as_input and any(run_dir.glob("fold[0-9]*.pt")):
            found.append((metrics.stat().st_mtime, str(run_dir)))
    return Path(max(found)[1]) if found else None
