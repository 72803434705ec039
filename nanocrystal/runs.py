"""A run: folds of one config, each trained and scored once, in a run folder that can be resumed.

Run folder: config.json, log.txt (ends with upstream's `- eval - name: value` lines), metrics.json, oof_predictions.csv,
fold<k>.json (a finished fold's scores and predictions; for a tree model also its hyper-parameter `selection`) and, for
a neural model, fold<k>.pt (everything prediction needs).
"""
from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import pickle
import signal
import sys
import time
import warnings
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
import torch
from filelock import FileLock, Timeout

from .config import ROOT, TREE_MODELS, Config
from .correction import SeriesCorrection, Siblings
from .descriptors import DescriptorStore
from .encode import Encoder, descriptor_matrix, encode, fit_encoder, unknown_substances
from .engine import ensemble_predict, train_member
from .errors import InputError
from .files import write_atomic, write_text
from .metrics import SHAPE_METRICS, SIZE_METRICS, mean_metrics, shape_metrics, size_metrics
from .model import MODELS
from .progress import Progress
from .recipes import PRODUCT_NAME, is_solid, load_dataset
from .splits import Fold, combined_table, inner_groups, inner_pool, run_folds, task_rows
from .substances import is_table, run_store
from .uncertainty import (CATEGORY_NAMES, SEEN, FoldCalibration, ShapeCalibration, SizeCalibration, coverage,
                          difficulty_features, set_labels)

if TYPE_CHECKING:  # baselines (LightGBM, scikit-learn) is imported only when a run uses it
    from .baselines import TreeBlend

# per fold and their fold mean in metrics.json; the eval log lines name them coverage/width and set_coverage/set_size
UNCERTAINTY_METRICS = {"size": ("coverage", "mean_width_nm"), "shape": ("set_coverage", "mean_set_size")}
NEURAL_MODELS = tuple(MODELS)  # trained by engine.train_member; the rest are baselines.fit_selected
CHECKPOINT_KEYS = ("config", "encoder", "n_shapes", "members")
LOCK_FILE = ".lock"  # in the run folder: held (filelock) by the process running it, for the whole run


class RunError(InputError, RuntimeError):
    pass


class CheckpointError(InputError, ValueError):
    pass


def default_run_dir(cfg: Config) -> Path:
    name = cfg.exp or f"{cfg.task}-{cfg.model}-{'lopo' if cfg.object_name else cfg.split}"
    return ROOT / "runs" / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def results_config(cfg: Config) -> dict:
    """The fields that decide a run's results (not where it is saved or how many processes ran it)."""
    values = json.loads(cfg.to_json())
    for name in ("save_path", "resume", "workers", "threads", "device", "backend", "ray_address", "job_gpus"):
        values.pop(name)
    return values


def open_run_dir(cfg: Config) -> tuple[Path, FileLock]:
    """A new folder, or with --resume the same folder of the same config, locked for this process: the caller releases
    the lock when the run ends. Never overwrites another run; never lets two processes run one folder."""
    if cfg.resume and not cfg.save_path:  # the default folder name is new each time: nothing would be resumed
        raise RunError("--resume needs --save_path (the folder of the run to finish)")
    run_dir = Path(cfg.save_path) if cfg.save_path else default_run_dir(cfg)
    holds_run(run_dir, cfg)  # refused before anything is written into a folder that is not ours
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunError(f"{run_dir}: another training is running in this folder; wait for it to end (then --resume "
                       "finishes what it left) or choose another --save_path") from None
    try:
        if not holds_run(run_dir, cfg):  # again under the lock: a process that just let go may have written one
            write_text(run_dir / "config.json", cfg.to_json())
    except BaseException:
        lock.release()
        raise
    return run_dir, lock


def holds_run(run_dir: Path, cfg: Config) -> bool:
    """True if `run_dir` holds the run that --resume continues; False if it is empty or absent; RunError if it holds
    anything else."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir}: is a file, not a run folder; choose another --save_path")
    if not run_dir.exists() or not [p for p in run_dir.iterdir() if p.name != LOCK_FILE]:
        return False
    if not cfg.resume:
        raise RunError(f"{run_dir} already holds a run; choose another --save_path or pass --resume")
    config_path = run_dir / "config.json"
    if results_config(Config.load(config_path)) != results_config(cfg):
        raise RunError(f"{config_path}: --resume needs the same config as the saved run")
    return True


def make_logger(run_dir: Path) -> logging.Logger:
    logger = logging.getLogger(f"nanocrystal.{run_dir}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        formatter = logging.Formatter("%(asctime)s [%(levelname)s]: %(message)s")
        for handler in (logging.FileHandler(run_dir / "log.txt"), logging.StreamHandler(sys.stdout)):
            handler.setFormatter(formatter)
            logger.addHandler(handler)
    return logger


def close_logger(logger: logging.Logger) -> None:
    """The run's log file is closed when the run ends (a process may run many runs, as the tests do)."""
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


# ---- one fold --------------------------------------------------------------------------------------------------------

@dataclass
class FoldData:
    train: pd.DataFrame
    valid: pd.DataFrame
    train_weak: np.ndarray
    train_augmented: np.ndarray  # rows from augment.py (after the recipe table's own rows)
    train_shots: np.ndarray | None = None  # few-shot folds: the held-out product's recipes among the training rows

    def take(self, rows: np.ndarray) -> "FoldData":
        """The same fold with only `rows` (a mask or positions) of its training rows."""
        return replace(self, train=self.train.iloc[rows].reset_index(drop=True), train_weak=self.train_weak[rows],
                       train_augmented=self.train_augmented[rows],
                       train_shots=None if self.train_shots is None else self.train_shots[rows])


def inner_fold(table: pd.DataFrame, fold: Fold, cfg: Config) -> Fold:
    """For tuning: hold out `inner_val_frac` of the fold's training rows like its validation rows, as the outer split
    does: whole recipe series for the grouped split, whole products (every sized row of them) for
    leave-one-product-out, rows of the evaluation pool otherwise. The outer validation rows stay out entirely."""
    rng = np.random.default_rng(cfg.seed + 1000 * fold.index)
    train = table.iloc[fold.train]
    pool = inner_pool(cfg, train, ~is_solid(train).to_numpy())  # as the inner CV of the tree models
    groups = inner_groups(cfg, train)
    candidates = np.unique(groups[pool])
    chosen = rng.choice(candidates, size=max(1, round(len(candidates) * cfg.inner_val_frac)), replace=False)
    held = np.isin(groups, chosen)
    return Fold(fold.index, f"{fold.name}-inner", fold.train[~held], np.sort(fold.train[pool & held]))


def fold_data(cfg: Config, table: pd.DataFrame, fold: Fold, n_shapes: int) -> FoldData:
    positions = task_rows(table, fold.train, cfg.task, cfg.use_weak, cfg.use_large, cfg.use_failures)
    train = table.iloc[positions].reset_index(drop=True)
    weak = ~is_solid(train).to_numpy()
    augmented = np.zeros(len(train), bool)
    if cfg.augmented:
        from .augment import load_augmented

        extra = load_augmented(cfg.augmented, cfg.split, cfg.seed, cfg.n_folds, cfg.object_name,
                               fold.name.removesuffix("-inner"), n_shapes)
        extra = extra[extra["source_ID"].isin(train["ID"])]  # inner tuning: only rows from the inner training part
        extra_positions = task_rows(extra, np.arange(len(extra)), cfg.task, cfg.use_weak, cfg.use_large,
                                    cfg.use_failures)
        extra = extra.iloc[extra_positions]
        extra_weak = np.ones(len(extra), bool) if not cfg.trust_augmented else ~is_solid(extra).to_numpy()
        train = pd.concat([train, extra.drop(columns=["source_ID", "augmented"])], ignore_index=True)
        weak = np.concatenate([weak, extra_weak])
        augmented = np.concatenate([augmented, np.ones(len(extra), bool)])
    shots = None
    if cfg.shots:  # the fold's training rows of its held-out product (product_folds puts no other of them there)
        held_out = table.iloc[fold.valid][PRODUCT_NAME].unique()
        shots = train[PRODUCT_NAME].isin(held_out).to_numpy()
    return FoldData(train, table.iloc[fold.valid].reset_index(drop=True), weak, augmented, shots)


def make_model_factory(cfg: Config, encoder: Encoder, store: DescriptorStore, n_shapes: int):
    descriptors = descriptor_matrix(encoder, store)
    model_class = MODELS[cfg.model]
    return lambda: model_class(cfg, descriptors, len(encoder.condition_names), n_shapes,
                               encoder.size_center, encoder.size_scale)


@dataclass
class NeuralPart:
    """A fold's transformer: its checkpoint entries and its predictions of the held-out rows (and, for the series
    correction, of the training rows)."""
    checkpoint: dict
    prediction: dict[str, np.ndarray]
    in_sample: dict[str, np.ndarray] | None
    curve: list[dict]  # --eval_every: the upstream-style held-out curve, logged and labelled, never used to choose
    wall_s: float = 0.0


@dataclass
class TreePart:
    """A blend fold's tree models (checkpoint entries) and their calibration. They read nothing of the transformer, so
    a fold's two parts can run in separate processes (`FOLD_PARTS`)."""
    trees: list[dict]
    calibration: FoldCalibration | None
    wall_s: float = 0.0


def neural_part(cfg: Config, data: FoldData, store: DescriptorStore, n_shapes: int, logger,
                fold_name: str = "") -> NeuralPart:
    start = time.time()
    encoder = fit_encoder(data.train, store, cfg.amount_scaling, cfg.use_product, cfg.size_as_input)
    train_batch = encode(data.train, encoder, data.train_weak)
    valid_batch = encode(data.valid, encoder)
    factory = make_model_factory(cfg, encoder, store, n_shapes)
    members, curve = [], []
    report = fold_progress(cfg, fold_name, logger)

    def log_curve(epoch: int, model, member: int) -> None:
        if epoch % cfg.eval_every == 0:
            scores = score(cfg, data.valid, ensemble_predict([model], valid_batch), n_shapes)
            curve.append({"member": member, "epoch": epoch, **{k: scores[k] for k in primary_metrics(cfg)}})
            logger.info(f"{fold_name} val-selected curve (not the result) member {member} epoch {epoch}: "
                        + ", ".join(f"{k} {scores[k]:.4f}" for k in primary_metrics(cfg)))

    for member in range(cfg.n_members):
        # upstream-style curve on the held-out rows: logged, labelled, never used to choose
        on_epoch = functools.partial(log_curve, member=member) if cfg.eval_every else None
        snapshots, _ = train_member(factory, train_batch, cfg, seed=cfg.seed * 1000 + member, on_epoch=on_epoch,
                                    report=report(member))
        members.extend(snapshots)
    checkpoint = {
        "config": json.loads(cfg.to_json()),
        "encoder": encoder.to_dict(),
        "n_shapes": n_shapes,
        "members": [m.state_dict() for m in members],
    }
    if not is_table(cfg.descriptors):  # computed vectors: kept, so a later change of substances.csv changes no model
        checkpoint["descriptor_vectors"] = descriptor_matrix(encoder, store)
    in_sample = ensemble_predict(members, train_batch) if cfg.series_correction and cfg.task == "size" else None
    return NeuralPart(checkpoint, ensemble_predict(members, valid_batch), in_sample, curve, time.time() - start)


def tree_part(cfg: Config, data: FoldData, store: DescriptorStore, n_shapes: int) -> TreePart:
    """--tree_blend: the fold's tree models, each chosen by inner CV, and the fold's calibration on their inner
    refits."""
    from .baselines import blend_state, fit_blend

    start = time.time()
    fitted = fit_blend(cfg, data, store, n_shapes)
    calibration = (calibrate(cfg, data, inner_tree_model(cfg, fitted, store, n_shapes)) if cfg.calibration_folds
                   else None)
    return TreePart(blend_state(cfg, fitted), calibration, time.time() - start)


def fit_neural_fold(cfg: Config, data: FoldData, store: DescriptorStore, n_shapes: int, logger, fold_name: str = "",
                    parts: tuple[NeuralPart, TreePart | None] | None = None):
    """A neural fold's prediction of its held-out rows and its checkpoint: the transformer, with --tree_blend the
    trees, then the series correction and the calibration. `parts`: the transformer and trees already fitted (in
    separate processes), else fitted here."""
    neural, trees = parts or (neural_part(cfg, data, store, n_shapes, logger, fold_name),
                              tree_part(cfg, data, store, n_shapes) if cfg.tree_blend else None)
    prediction, checkpoint = dict(neural.prediction), dict(neural.checkpoint)
    # the held-out figure after each stage of the prediction, so a run shows what the trees and the correction add
    stages = {cfg.model: stage_scores(cfg, data.valid, prediction, n_shapes)}
    if neural.curve:
        prediction["val_curve"] = neural.curve
    if trees is not None:
        from .baselines import TreeBlend

        checkpoint["trees"] = trees.trees
        blend_model = TreeBlend.from_state(trees.trees, store, n_shapes)
        prediction = blend(cfg, prediction, blend_model.predict(data.valid))
        stages["tree_blend"] = stage_scores(cfg, data.valid, prediction, n_shapes)
        # each tree model's inner-CV choice, kept in fold<k>.json
        prediction["selection"] = {f"tree_blend_{entry['model']}": json.loads(entry["selection"])
                                   for entry in trees.trees}
    if cfg.series_correction and cfg.task == "size":
        # the fold's final prediction for its own training rows (the recipe table's rows) gives the residuals
        own = ~data.train_augmented
        in_sample = neural.in_sample
        if trees is not None:
            in_sample = blend(cfg, in_sample, blend_model.predict(data.train))
        correction = SeriesCorrection.fit(data.train[own], in_sample["size"][own], cfg.correction_scale,
                                          cfg.correction_shrink)
        checkpoint["correction"] = correction.to_state()
        factors = correction.factors(data.valid)
        prediction = {**prediction, "size": prediction["size"] * factors, "size_std": prediction["size_std"] * factors}
        stages["series_correction"] = stage_scores(cfg, data.valid, prediction, n_shapes)
    if cfg.calibration_folds:
        calibration = (trees.calibration if trees is not None
                       else calibrate(cfg, data, inner_neural_model(cfg, store, n_shapes, logger)))
        checkpoint["calibration"] = calibration.to_state()
        spread = None
        if cfg.task == "size":
            spread = blend_model.log_spread(data.valid) if trees is not None else neural_spread(prediction)
        prediction = {**prediction, **calibrated_outputs(cfg, calibration, data.valid, prediction, spread)}
    return {**prediction, "stages": stages}, checkpoint


def fold_progress(cfg: Config, fold_name: str, logger: logging.Logger):
    """One bar per fold over every member's epochs, showing member, epoch and loss; where no one watches a terminal
    (progress.interactive) a log line every fifth of a member's epochs instead. Returns member -> the `report`
    callback of engine.train_member."""
    per_member = cfg.pretrain_epochs + cfg.epochs
    progress = Progress(cfg.n_members * per_member, f"{fold_name} {cfg.model}".strip(), logger.info,
                        every=max(1, per_member // 5), unit="epochs")

    def member_report(member: int):
        def report(stage: str, epoch: int, loss: float) -> None:
            epochs = cfg.epochs if stage == "train" else cfg.pretrain_epochs
            progress.update(member=f"{member + 1}/{cfg.n_members}",
                            **{"epoch" if stage == "train" else "pretrain epoch": f"{epoch}/{epochs}"}, loss=loss)
        return report
    return member_report


def blend(cfg: Config, transformer: dict[str, np.ndarray], trees: np.ndarray) -> dict[str, np.ndarray]:
    """--tree_blend: the weighted mean of the transformer's and the trees' size (nm) or shape probabilities; the
    failed-synthesis probability stays the transformer's."""
    key = "size" if cfg.task == "size" else "shape"
    return {**transformer, key: (1 - cfg.tree_blend) * transformer[key] + cfg.tree_blend * trees}


# ---- calibration (uncertainty.py): out-of-fold predictions of the fold's own training rows ----------------------------

def applies_correction(cfg: Config) -> bool:
    return cfg.series_correction and cfg.task == "size" and cfg.model in NEURAL_MODELS


def neural_spread(prediction: dict[str, np.ndarray]) -> np.ndarray:
    """The members' spread of log(size), from their mean and standard deviation in nm."""
    return prediction["size_std"] / np.maximum(prediction["size"], 1e-6)


def inner_tree_model(cfg: Config, fitted: list, store: DescriptorStore, n_shapes: int):
    """The calibration model of a run with tree models (the blend's, or the run's own): the same models with the same
    inner-CV choices, refitted on an inner fit part; then the series correction when the run applies it. The
    blend's transformer is left out: retraining it for each inner fold would cost several times the run (what this
    leaves out is measured: docs/uncertainty.md)."""
    from .baselines import blend_configs, blend_rows, fit_chosen, member_spread

    configs = blend_configs(cfg) if cfg.model in NEURAL_MODELS else [cfg]

    def fit_predict(fit: FoldData, scored: pd.DataFrame) -> dict[str, np.ndarray]:
        rows = blend_rows(cfg, fit) if cfg.model in NEURAL_MODELS else fit
        models = [fit_chosen(c, rows.train, rows.train_weak, store, tree.candidate, shots=rows.train_shots)
                  for c, tree in zip(configs, fitted)]
        if cfg.task == "shape":
            return {"shape": np.mean([tree.predict(c, scored, n_shapes)["shape"] for c, tree in zip(configs, models)],
                                     axis=0)}
        members = [tree.log_members(c, scored) for c, tree in zip(configs, models)]
        size = np.mean([np.exp(m.mean(axis=1)) for m in members], axis=0)  # each model: the mean of log(size)
        if applies_correction(cfg):
            in_sample = np.mean([tree.predict(c, rows.train, n_shapes)["size"] for c, tree in zip(configs, models)], 0)
            correction = SeriesCorrection.fit(rows.train, in_sample, cfg.correction_scale, cfg.correction_shrink)
            size = size * correction.factors(scored)
        return {"size": size, "spread": member_spread(members)}
    return fit_predict


def inner_neural_model(cfg: Config, store: DescriptorStore, n_shapes: int, logger):
    """The calibration model of a neural run without trees: the run's own model (members, correction), retrained on
    each inner fit part."""
    inner_cfg = replace(cfg, calibration_folds=0, eval_every=0)

    def fit_predict(fit: FoldData, scored: pd.DataFrame) -> dict[str, np.ndarray]:
        prediction, _ = fit_neural_fold(inner_cfg, replace(fit, valid=scored), store, n_shapes, logger)
        return {**prediction, "spread": neural_spread(prediction)} if cfg.task == "size" else prediction
    return fit_predict


def calibrated_outputs(cfg: Config, calibration: FoldCalibration, valid: pd.DataFrame, prediction: dict,
                       spread: np.ndarray | None) -> dict:
    """Size: the interval of each validation row (and the baseline's, sigma, seen); shape: its prediction set."""
    outputs = {"calibration": calibration.to_state(with_siblings=False)}
    if cfg.task == "size":
        return {**outputs, **calibration.size_outputs(valid, prediction["size"], spread, cfg.confidence)}
    return {**outputs, "set": calibration.shape.sets(prediction["shape"], cfg.confidence)}


def calibration_rows(cfg: Config, data: FoldData, fit_predict) -> dict[str, np.ndarray]:
    """The out-of-fold predictions of the fold's training rows like its validation rows: `cfg.calibration_folds`
    inner folds (grouped as the outer split: series for the grouped split, products for leave-one-product-out), each
    scored by `fit_predict` fitted on the rest of the training rows. Augmented rows are left out (a copy of a scored
    row would leak its label). The held-out fold is never read. Size: `residual` (log true / predicted), `seen`,
    `spread`, `proximity`; shape: `probabilities`, `shape`; both: `group` (the inner fold)."""
    from .baselines import inner_splits

    rows = data.take(~data.train_augmented)
    parts = []
    for group, (fit_rows, scored_rows) in enumerate(inner_splits(cfg, rows.train, rows.train_weak,
                                                                 cfg.calibration_folds)):
        fit = rows.take(fit_rows)
        scored = rows.train.iloc[scored_rows].reset_index(drop=True)
        prediction = fit_predict(fit, scored)
        part = {"group": np.full(len(scored), group)}
        if cfg.task == "size":
            seen, proximity = Siblings.of(fit.train, cfg.correction_scale).proximity(scored)
            part.update(residual=np.log(scored["Y1"].to_numpy(float) / prediction["size"]), seen=seen,
                        spread=prediction["spread"], proximity=proximity, predicted=prediction["size"])
        else:
            part.update(probabilities=prediction["shape"], shape=scored["Y3"].to_numpy(int))
        parts.append(part)
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def calibrate(cfg: Config, data: FoldData, fit_predict) -> FoldCalibration:
    """The fold's calibration from `calibration_rows`."""
    rows = calibration_rows(cfg, data, fit_predict)
    if cfg.task == "shape":
        return FoldCalibration(shape=ShapeCalibration.fit(rows["probabilities"], rows["shape"]))
    features = difficulty_features(rows["spread"], rows["proximity"])
    size = SizeCalibration.fit(rows["residual"], features, rows["seen"], rows["group"])
    baseline = SizeCalibration.fit(rows["residual"], features, rows["seen"], rows["group"], normalized=False)
    own = data.train[~data.train_augmented]
    return FoldCalibration(size, baseline, Siblings.of(own, cfg.correction_scale))


@dataclass
class FoldCheckpoint:
    """A fold's saved ensemble, rebuilt: the transformer members and, with --tree_blend, its tree models."""
    cfg: Config
    encoder: Encoder
    members: list[torch.nn.Module]
    n_shapes: int
    trees: TreeBlend | None
    correction: SeriesCorrection | None
    calibration: FoldCalibration | None  # absent in runs with --calibration_folds 0


def retrain_hint(path: Path) -> str:
    return f"re-train the run (python train.py --config {path.parent / 'config.json'} --save_path NEW)"


# torch.save writes a zip archive; before torch 1.6 it wrote a pickle that opens with this magic number
TORCH_HEADERS = (b"PK\x03\x04", b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19")


def has_torch_header(path: Path) -> bool:
    with path.open("rb") as file:
        head = file.read(16)
    return head.startswith(TORCH_HEADERS)


def read_checkpoint(path: Path) -> dict:
    """A fold checkpoint's contents (weights_only: no code runs on load). Every way a file can fail to load is a
    CheckpointError naming it; torch's own text is not passed on, as it suggests turning the safe loader off."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; {retrain_hint(path)}")
    reason = "an empty file" if path.stat().st_size == 0 else None
    if reason is None:
        try:
            with warnings.catch_warnings():  # e.g. about the pickle protocol of a file that is no checkpoint
                warnings.simplefilter("ignore")
                checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as error:  # torch's reader fails in many ways (UnpicklingError, RuntimeError, EOFError, ...)
            if not has_torch_header(path):  # random bytes may read as any pickle opcode, GLOBAL included
                reason = "not a PyTorch checkpoint"
            elif isinstance(error, pickle.UnpicklingError) and "GLOBAL" in str(error):  # the safe unpickler refuses
                reason = "holds Python objects other than tensors and plain data, which could run code: refused"
            else:
                reason = "damaged or truncated: not a readable PyTorch checkpoint"
    if reason is None and isinstance(checkpoint, dict) and "lgbm" in checkpoint:
        # its LightGBM model predicts nm; the blend's trees now predict log(size)
        raise CheckpointError(f"{path}: written by an older version (LightGBM blend); re-run it: "
                              f"train.py --config {path.parent / 'config.json'} --save_path NEW")
    if reason is None and not (isinstance(checkpoint, dict) and set(CHECKPOINT_KEYS) <= set(checkpoint)):
        reason = f"not a fold checkpoint (needs the keys {', '.join(CHECKPOINT_KEYS)})"
    if reason is not None:
        raise CheckpointError(f"{path}: {reason}; {retrain_hint(path)} or copy the file again")
    return checkpoint


def load_fold_models(path: Path, store: DescriptorStore | None) -> FoldCheckpoint:
    """Rebuild a fold's ensemble from its checkpoint; CheckpointError (one line: the file and what to do) if it
    cannot be. `store` is the descriptor table of a table run; a run on computed descriptors carries its own."""
    checkpoint = read_checkpoint(path)
    try:
        cfg = Config.from_dict(checkpoint["config"], f"{path} (its config)")
        encoder = Encoder.from_dict(checkpoint["encoder"])
        if "descriptor_vectors" in checkpoint:
            store = DescriptorStore(dict(zip(encoder.vocabulary[1:], checkpoint["descriptor_vectors"][1:].numpy())))
        factory = make_model_factory(cfg, encoder, store, checkpoint["n_shapes"])
        members = []
        for state in checkpoint["members"]:
            model = factory()
            model.load_state_dict(state)
            model.eval()
            members.append(model)
        trees = None
        if "trees" in checkpoint:
            from .baselines import TreeBlend

            trees = TreeBlend.from_state(checkpoint["trees"], store, checkpoint["n_shapes"])
        correction = SeriesCorrection.from_state(checkpoint["correction"]) if "correction" in checkpoint else None
        calibration = FoldCalibration.from_state(checkpoint["calibration"]) if "calibration" in checkpoint else None
    except InputError as error:  # its config, or substances the descriptor file lacks
        message = "; ".join(str(error).splitlines())
        raise CheckpointError(f"{'' if message.startswith(str(path)) else f'{path}: '}{message}; "
                              f"{retrain_hint(path)}") from None
    except Exception as error:  # contents that do not fit this code's models (shapes, keys, types)
        raise CheckpointError(f"{path}: does not fit this code's models ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}); {retrain_hint(path)}") from None
    return FoldCheckpoint(cfg, encoder, members, checkpoint["n_shapes"], trees, correction, calibration)


@torch.no_grad()
def oof_embeddings(run_dir: Path, table: pd.DataFrame,
                   store: DescriptorStore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold `cls_embedding`s: each fold's held-out rows through that fold's checkpoint. Returns the embeddings,
    the rows' shape indices and fold names. Only the first ensemble member: every model has its own space, so
    neither members nor folds can be averaged or mixed."""
    cfg = Config.load(run_dir / "config.json")
    values, shapes, names = [], [], []
    for fold in run_folds(cfg, table):
        if (run_dir / f"{fold.name}.pt").is_file():
            saved = load_fold_models(run_dir / f"{fold.name}.pt", store)
            valid = table.iloc[fold.valid]
            values.append(saved.members[0].cls_embedding(encode(valid, saved.encoder)).numpy())
            shapes.append(valid["Y3"].to_numpy())
            names.append(np.full(len(valid), fold.name, dtype=object))
    if not values:
        raise RunError(f"{run_dir}: no fold checkpoint (fold<k>.pt)")
    return np.concatenate(values), np.concatenate(shapes), np.concatenate(names)


def interval_scores(frame: pd.DataFrame) -> dict:
    """Coverage and mean width (nm) of the intervals of out-of-fold rows (`fold_predictions`), overall and by series,
    beside the plain baseline's on the same rows."""
    def scores(lo: str, hi: str) -> dict:
        out = coverage(frame["true"].to_numpy(), frame[lo].to_numpy(), frame[hi].to_numpy())
        for category, name in CATEGORY_NAMES.items():
            rows = frame[frame["series"] == ("seen" if category == SEEN else "new")]
            out[name] = coverage(rows["true"].to_numpy(), rows[lo].to_numpy(), rows[hi].to_numpy())
        return out
    return {**scores("lo", "hi"), "baseline": scores("baseline_lo", "baseline_hi")}


def set_scores(frame: pd.DataFrame) -> dict:
    """Coverage and mean size of the shape prediction sets of out-of-fold rows (`fold_predictions`)."""
    members = frame["set"].fillna("").astype(str).str.split("|")
    inside = [str(true) in set_ for true, set_ in zip(frame["true"], members)]
    sizes = [len([m for m in set_ if m]) for set_ in members]
    return {"set_coverage": float(np.mean(inside)), "mean_set_size": float(np.mean(sizes)), "rows": len(frame)}


def uncertainty_scores(cfg: Config, frame: pd.DataFrame) -> dict:
    if cfg.task == "size":
        return interval_scores(frame) if "lo" in frame else {}
    return set_scores(frame) if "set" in frame else {}


def primary_metrics(cfg: Config) -> tuple[str, ...]:
    return SIZE_METRICS if cfg.task == "size" else SHAPE_METRICS


def score(cfg: Config, valid: pd.DataFrame, prediction: dict, n_shapes: int) -> dict:
    if cfg.task == "size":
        return size_metrics(valid["Y1"].to_numpy(), prediction["size"])
    shape = valid["Y3"].to_numpy()
    keep = shape < n_shapes  # the failure logit is excluded from the shape metrics
    return shape_metrics(shape[keep], prediction["shape"][keep].argmax(1), n_shapes)


def stage_scores(cfg: Config, valid: pd.DataFrame, prediction: dict, n_shapes: int) -> dict[str, float]:
    scores = score(cfg, valid, prediction, n_shapes)
    return {name: scores[name] for name in primary_metrics(cfg)}


def fold_predictions(cfg: Config, fold: Fold, valid: pd.DataFrame, prediction: dict) -> pd.DataFrame:
    """The fold's rows of oof_predictions.csv. Size: `lo`, `hi` (the interval at --confidence), `sigma` (its
    difficulty), `series` (seen / new: whether a training row shares the recipe's series) and the plain baseline's
    interval; shape: `set`, the shape indices in the prediction set ('9|1')."""
    frame = pd.DataFrame({"ID": valid["ID"].to_numpy(), "fold": fold.name})
    if cfg.task == "size":
        frame["true"] = valid["Y1"].to_numpy()
        frame["pred"] = prediction["size"]
        frame["pred_std"] = prediction.get("size_std", np.zeros(len(valid)))
        if "lo" in prediction:
            for column in ("lo", "hi", "sigma", "baseline_lo", "baseline_hi"):
                frame[column] = prediction[column]
            frame["series"] = np.where(prediction["seen"], "seen", "new")
    else:
        frame["true"] = valid["Y3"].to_numpy()
        frame["pred"] = prediction["shape"].argmax(1)
        for k in range(prediction["shape"].shape[1]):
            frame[f"prob_{k}"] = prediction["shape"][:, k]
        frame["p_failed"] = prediction["failed"]
        if "set" in prediction:
            indices = [str(k) for k in range(prediction["shape"].shape[1])]
            frame["set"] = set_labels(prediction["set"], prediction["shape"], indices)
    return frame


# ---- the run ---------------------------------------------------------------------------------------------------------

# A blend fold's two parts, for processes of their own: the trees take about as long as the transformer, so 5 folds
# on 2 workers run as 10 even jobs instead of 2 + 2 + 1 folds with one core idle for the last.
FOLD_PARTS = ("trees", "neural")


def fold_parts(cfg: Config) -> tuple[str, ...]:
    """The parts a fold of `cfg` runs as (`run_fold_part`), or () when it runs whole."""
    return FOLD_PARTS if cfg.model in NEURAL_MODELS and cfg.tree_blend else ()


def fold_inputs(cfg: Config, run_dir: Path, outer: Fold, announce: bool = True):
    """What a fold's work reads, loaded in the process that runs it: its logger, the dataset, the descriptors, the
    fold (the inner one of a tuning run) and its rows."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    logger = make_logger(run_dir)
    dataset = load_dataset(cfg.data_dir)
    store = run_store(cfg.descriptors, cfg.feats_path)
    table = combined_table(dataset)
    fold = inner_fold(table, outer, cfg) if cfg.inner_val_frac else outer
    data = fold_data(cfg, table, fold, dataset.n_shapes)
    if announce:
        failed = data.train["failed"].to_numpy()
        logger.info(f"{fold.name}: {len(data.train)} training rows ({int((data.train_weak & ~failed).sum())} weak, "
                    f"{int(failed.sum())} failed syntheses), {len(data.valid)} validation rows")
    return logger, dataset, store, fold, data


def run_fold_part(cfg: Config, run_dir: Path, outer: Fold, part: str) -> NeuralPart | TreePart:
    """One of `fold_parts(cfg)`, in a worker process; `run_fold` puts a fold's parts together."""
    logger, dataset, store, fold, data = fold_inputs(cfg, run_dir, outer, announce=part == FOLD_PARTS[0])
    if part == "trees":
        return tree_part(cfg, data, store, dataset.n_shapes)
    return neural_part(cfg, data, store, dataset.n_shapes, logger, fold.name)


def run_fold(cfg: Config, run_dir: Path, outer: Fold, parts: dict[str, NeuralPart | TreePart] | None = None) -> None:
    """Train and score one fold; its record and checkpoint land in the run folder. Runs in a worker process
    when folds run in parallel, so it loads what it needs itself. `parts`: its `fold_parts`, fitted by
    `run_fold_part` in other processes (the wall time is theirs added up)."""
    logger, dataset, store, fold, data = fold_inputs(cfg, run_dir, outer, announce=parts is None)
    fold_start = time.time() - sum(part.wall_s for part in (parts or {}).values())
    if cfg.model in NEURAL_MODELS:
        given = (parts["neural"], parts.get("trees")) if parts else None
        prediction, checkpoint = fit_neural_fold(cfg, data, store, dataset.n_shapes, logger, fold.name, given)
        write_atomic(run_dir / f"{outer.name}.pt", lambda temp: torch.save(checkpoint, temp))
    else:
        from .baselines import fit_selected, member_spread

        logger.info(f"{fold.name}: {cfg.model}: choosing hyper-parameters by inner cross-validation, then the refit")
        fitted = fit_selected(cfg, data, store, dataset.n_shapes)
        prediction = {**fitted.predict(cfg, data.valid, dataset.n_shapes), "selection": fitted.selection}
        if cfg.calibration_folds:
            calibration = calibrate(cfg, data, inner_tree_model(cfg, [fitted], store, dataset.n_shapes))
            spread = member_spread([fitted.log_members(cfg, data.valid)]) if cfg.task == "size" else None
            prediction.update(calibrated_outputs(cfg, calibration, data.valid, prediction, spread))
    scores = score(cfg, data.valid, prediction, dataset.n_shapes)
    predictions = fold_predictions(cfg, fold, data.valid, prediction)
    uncertainty = uncertainty_scores(cfg, predictions)
    scores.update({name: uncertainty[name] for name in UNCERTAINTY_METRICS[cfg.task] if name in uncertainty})
    record = {"fold": outer.name, "scored_on": "inner" if cfg.inner_val_frac else "held-out",
              "metrics": scores, "wall_s": time.time() - fold_start,
              "predictions": predictions.to_dict(orient="list")}
    if uncertainty:  # the calibration rows too, for the report's coverage at other confidences
        record["uncertainty"] = uncertainty
        record["calibration"] = prediction["calibration"]
    if "selection" in prediction:  # tree baselines: the chosen parameters and every candidate's inner score
        record["selection"] = prediction["selection"]
    if "val_curve" in prediction:  # --eval_every: the held-out curve, for the labelled upstream-style figure only
        record["val_curve"] = prediction["val_curve"]
    if "stages" in prediction:
        record["stages"] = prediction["stages"]
        logger.info(f"{fold.name} by stage: " + "; ".join(
            f"{stage} {', '.join(f'{k} {v:.4f}' for k, v in values.items())}"
            for stage, values in prediction["stages"].items()))
    write_text(run_dir / f"{outer.name}.json", json.dumps(record))
    logger.info(f"{fold.name}: " + ", ".join(f"{k} {scores[k]:.4f}" for k in primary_metrics(cfg))
                + "".join(f", {k} {scores[k]:.4f}" for k in UNCERTAINTY_METRICS[cfg.task] if k in scores)
                + f" ({record['wall_s']:.0f} s)")


def fold_files(cfg: Config, outer: Fold) -> dict[str, bytes]:
    """`run_fold` in a temporary folder, for a worker that may not share the run folder's disk (a Ray task): the
    files it wrote there (fold<k>.json, fold<k>.pt, log.txt), for the driver to save with `save_fold_files`."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nanocrystal-fold-") as folder:
        run_fold(cfg, Path(folder), outer)
        close_logger(make_logger(Path(folder)))
        return {path.name: path.read_bytes() for path in Path(folder).iterdir() if path.is_file()}


def save_fold_files(run_dir: Path, outer: Fold, files: dict[str, bytes]) -> None:
    """Write a fold's files from `fold_files` into the run folder as `run_fold` would have: its log lines appended to
    log.txt, the checkpoint, then fold<k>.json last (a fold is done, for --resume, once its record exists)."""
    with open(run_dir / "log.txt", "ab") as log:
        log.write(files.get("log.txt", b""))
    for name in (f"{outer.name}.pt", f"{outer.name}.json"):
        if name in files:
            write_atomic(run_dir / name, lambda temp, name=name: Path(temp).write_bytes(files[name]))


def quiet_worker() -> None:
    """A fold worker: Ctrl-C (sent to every process of the terminal) is the main process's to report, once; the
    main process's terminate() ends it through its `finally` blocks, so no temp file stays behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def chosen_folds(cfg: Config, table: pd.DataFrame) -> list[Fold]:
    """The folds this run scores (all, or those of --folds); ValueError for an unknown split, product or index."""
    folds = run_folds(cfg, table)
    unknown = sorted(set(cfg.folds) - {f.index for f in folds})
    if unknown:
        raise ValueError(f"--folds {' '.join(map(str, unknown))}: no such fold (0..{len(folds) - 1})")
    return [f for f in folds if not cfg.folds or f.index in cfg.folds]


def run_experiment(cfg: Config, command: str = "", on_fold: Callable[[dict], None] | None = None) -> Path:
    """Train and score every pending fold of `cfg` on its backend, then write metrics.json; `on_fold(record)` after
    each fold is saved, with its fold<k>.json (a sweep's progress report)."""
    start = time.time()
    try:  # every setting checked before a run folder exists: a typo leaves nothing behind
        if cfg.model not in NEURAL_MODELS + TREE_MODELS:
            raise ValueError(f"--model {cfg.model!r}: choose from {', '.join(NEURAL_MODELS + TREE_MODELS)}")
        dataset = load_dataset(cfg.data_dir)
        store = run_store(cfg.descriptors, cfg.feats_path)
        table = combined_table(dataset)
        folds = chosen_folds(cfg, table)
        if cfg.backend == "ray":
            from .backend import check

            check(cfg)  # a missing Ray is said before a run folder exists
    except ValueError as error:
        raise RunError(str(error)) from error
    run_dir, lock = open_run_dir(cfg)
    logger = make_logger(run_dir)
    try:  # the log file is closed and the folder unlocked however the run ends
        logger.info(f"run {run_dir} ({command or 'train.py'})")
        missing = unknown_substances(dataset.recipes, fit_encoder(dataset.recipes.head(5), store, "log", True, False))
        if missing:
            logger.info(f"{len(missing)} substances without a descriptor (used as zeros): {missing}")
        pending = [f for f in folds if not (run_dir / f"{f.name}.json").exists()]
        for done in folds:
            if done not in pending:
                logger.info(f"{done.name}: done earlier, kept (resume)")

        def saved(fold: Fold) -> None:
            if on_fold is not None:
                on_fold(json.loads((run_dir / f"{fold.name}.json").read_text()))

        if cfg.backend == "ray":
            from .backend import ray_map

            by_name = {fold.name: fold for fold in pending}

            def save(name: str, files: dict[str, bytes]) -> None:
                save_fold_files(run_dir, by_name[name], files)
                saved(by_name[name])
            ray_map(cfg, [(fold.name, fold_files, (cfg, fold)) for fold in pending], save)
        elif cfg.workers > 1 and len(pending) * max(1, len(fold_parts(cfg))) > 1:
            # small models use one core badly; whole folds (or their parts) in parallel processes use them well
            parts = fold_parts(cfg)
            context = multiprocessing.get_context("spawn")
            # leaving the block (done, failed or Ctrl-C) terminates the workers: none trains on unwatched
            with context.Pool(min(cfg.workers, len(pending) * max(1, len(parts))), initializer=quiet_worker) as pool:
                jobs = [(fold, [pool.apply_async(run_fold_part, (cfg, run_dir, fold, part)) for part in parts]
                         or [pool.apply_async(run_fold, (cfg, run_dir, fold))]) for fold in pending]
                for fold, results in jobs:
                    done = [result.get() for result in results]
                    if parts:  # put together here, while the workers go on with the next parts
                        run_fold(cfg, run_dir, fold, dict(zip(parts, done)))
                    saved(fold)
                pool.close()  # done: the workers exit on their own (terminate() would interrupt their clean-up)
                pool.join()
        else:
            for fold in pending:
                run_fold(cfg, run_dir, fold)
                saved(fold)
        finish_run(cfg, run_dir, folds, logger, command, time.time() - start)
    finally:
        close_logger(logger)
        lock.release()
    return run_dir


def selection_note(cfg: Config) -> str:
    if cfg.inner_val_frac:
        return "scored on an inner validation part of the training rows (tuning run)"
    blend = (f"; averaged with {' + '.join(cfg.blend_models)} (weight {cfg.tree_blend}, their hyper-parameters by "
             "inner CV on the fold's training rows)") if cfg.tree_blend else ""
    if cfg.series_correction and cfg.task == "size":
        blend += "; then the series correction (correction.py)"
    if cfg.model == "transformer":
        return "fixed schedule chosen on inner validation (no selection on the held-out fold)" + blend
    if cfg.model in NEURAL_MODELS:
        return "fixed hyper-parameters set in advance, no search (no selection on the held-out fold)" + blend
    return "hyper-parameters by inner cross-validation on the fold's training rows"


def val_selected(records: list[dict], names: tuple[str, ...]) -> dict:
    """Upstream's figure: per fold, the curve point (member, epoch) with the best first metric on the fold's own
    held-out rows (max accuracy, min MAE), its metrics averaged over folds. Selection on the test rows: a label for
    comparison with the paper, never the result."""
    first = names[0]
    sign = -1.0 if first == "accuracy" else 1.0
    best = [min(r["val_curve"], key=lambda point: sign * point[first]) for r in records]
    return {"note": "upstream style: best curve point of each fold chosen on its own held-out rows; not the result",
            "per_fold": [{"fold": r["fold"], **point} for r, point in zip(records, best)],
            "mean": mean_metrics(best, names)}


def finish_run(cfg: Config, run_dir: Path, folds: list[Fold], logger, command: str, wall_s: float) -> dict:
    records = [json.loads((run_dir / f"{f.name}.json").read_text()) for f in folds]
    names = primary_metrics(cfg)
    per_fold = [{"fold": r["fold"], **r["metrics"], "wall_s": r["wall_s"],
                 **({"selection": r["selection"]} if "selection" in r else {})} for r in records]
    metrics = {
        "task": cfg.task, "model": cfg.model, "split": "lopo" if cfg.object_name else cfg.split,
        "object_name": cfg.object_name, "preset": cfg.preset, "seed": cfg.seed,
        "scored_on": records[0]["scored_on"],
        "selection": selection_note(cfg),
        "mean": mean_metrics(per_fold, names), "per_fold": per_fold,
        "wall_s": wall_s, "fold_wall_s": float(sum(r["wall_s"] for r in records)),
        "command": command,
    }
    if all("stages" in r for r in records):  # neural runs: the mean held-out figure after each stage
        metrics["stages"] = {stage: mean_metrics([r["stages"][stage] for r in records], names)
                             for stage in records[0]["stages"]}
    if all("val_curve" in r for r in records):
        metrics["val_selected"] = val_selected(records, names)
    if cfg.task == "shape":
        metrics["confusion"] = np.sum([r["metrics"]["confusion"] for r in records], axis=0).tolist()
    oof = pd.concat([pd.DataFrame(r["predictions"]) for r in records], ignore_index=True)
    uncertainty = UNCERTAINTY_METRICS[cfg.task] if all("uncertainty" in r for r in records) else ()
    if uncertainty:
        metrics["mean"].update(mean_metrics(per_fold, uncertainty))
        # over all out-of-fold rows together (the fold means are in "mean"), by series, beside the baseline
        metrics["uncertainty"] = {"confidence": cfg.confidence, "method": uncertainty_note(cfg),
                                  **uncertainty_scores(cfg, oof)}
    write_atomic(run_dir / "oof_predictions.csv", lambda temp: oof.to_csv(temp, index=False))
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    if "val_selected" in metrics:  # before upstream's lines, which end the log and are the result
        logger.info("val-selected, upstream style (each fold's best curve point on its own held-out rows; not the "
                    "result): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics["val_selected"]["mean"].items()))
    if cfg.task == "size" and uncertainty:  # before the eval lines too: the plain baseline, for comparison
        base = metrics["uncertainty"]["baseline"]
        logger.info(f"plain baseline (split conformal on |log residual|, seen/new series; same calibration rows): "
                    f"coverage {base['coverage']:.4f}, width {base['mean_width_nm']:.4f} nm")
    for name in names:
        logger.info(f"- eval - {name}: {metrics['mean'][name]:.4f}")
    for name, label in zip(uncertainty, ("coverage", "width") if cfg.task == "size" else ("set_coverage", "set_size")):
        logger.info(f"- eval - {label}: {metrics['mean'][name]:.4f}")
    return metrics


def uncertainty_note(cfg: Config) -> str:
    """How a run's intervals or sets were calibrated, for metrics.json."""
    if cfg.model in TREE_MODELS:
        model = "the run's tree model"
    elif cfg.tree_blend:
        model = f"the blend's tree models ({' + '.join(cfg.blend_models)}; the transformer left out)"
    else:
        model = f"the run's {cfg.model}"
    what = ("size intervals: Mondrian (seen / new series) conformal regression on log(size), normalised by a "
            "difficulty model" if cfg.task == "size" else "shape sets: conformal classification, score 1 - p(shape)")
    return (f"{what}; calibrated on the out-of-fold predictions of {cfg.calibration_folds} inner folds of each fold's "
            f"training rows, by {model}" + ("; then the series correction" if applies_correction(cfg) else ""))
