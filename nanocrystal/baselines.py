"""Tree baselines (decision tree, random forest, extra trees, HistGradientBoosting, LightGBM) on the fixed-length
recipe vector.

`fit_selected` is what `runs.run_fold` calls for `--model dt|rf|et|hgb|lgbm`: same folds, pools and run folder as the
transformer. Selection is honest: every (hyper-parameters, weak-row weight) candidate of the small grids below is scored
by a 3-fold inner cross-validation over the fold's *training* rows (grouped by recipe series for the grouped split, by
product for leave-one-product-out), the best one is refitted on all training rows, and the held-out fold is predicted
once. Weak rows (Num < 300) keep their label; for size they get a lower sample weight, chosen with the rest, and every
size model fits log(size) (see SIZE_TARGET). Failures,
when the fold's training rows hold them (shape task with use_failures), are one more class whose probability becomes
`failed`; without them `failed` is NaN (not modelled).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from itertools import product
from typing import Any, Iterator

import lightgbm as lgb
import numpy as np
import pandas as pd
import torch
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import (ExtraTreesClassifier, ExtraTreesRegressor, HistGradientBoostingClassifier,
                              HistGradientBoostingRegressor, RandomForestClassifier, RandomForestRegressor)
from sklearn.model_selection import GroupKFold
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
from threadpoolctl import threadpool_limits

from .config import TREE_MODELS, Config
from .descriptors import DescriptorStore
from .features import RecipeFeaturizer
from .metrics import shape_metrics, size_metrics
from .progress import Progress
from .splits import inner_groups, inner_pool
from .substances import package_chemistry

INNER_FOLDS = 3

# Size models fit log(size) and predict exp of it: sizes are positive and their errors grow with them. Inner 3-fold CV
# over the training rows of all 5 paper-split folds (2,468 scored predictions, docs/size_model.md): LightGBM
# 1.766 -> 1.737 nm, random forest 1.766 -> 1.738, extra trees 1.741 -> 1.718.
SIZE_TARGET = (np.log, np.exp)

# Sample weight of a weak row (a solid row weighs 1), per task. Size: part of the grid, since weak size labels are
# noisy (few particles counted) but plentiful. Shape: 1, as in the transformer's shape loss; the particle count
# concerns the size statistics, not the shape seen on the micrographs.
WEAK_WEIGHTS: dict[str, tuple[float, ...]] = {"size": (0.1, 0.3, 1.0), "shape": (1.0,)}
# Extra trees for size: weight 1, fixed (inner CV, docs/size_model.md: 1.697 nm against 1.718 at 0.3 and 1.714 at
# 0.1); a third of the selection time, which the cpu preset's blend pays in every fold.
FIXED_WEAK_WEIGHTS: dict[tuple[str, str], tuple[float, ...]] = {("et", "size"): (1.0,)}


def weak_weights(model: str, task: str) -> tuple[float, ...]:
    return FIXED_WEAK_WEIGHTS.get((model, task), WEAK_WEIGHTS[task])


# LightGBM for size on new recipe series: the best of an Optuna search on the grouped split's inner folds, rounded
# (bench/tune_lgbm_inner.py, docs/size_model.md); it keeps its own Huber loss.
LGBM_NEW_SERIES = dict(num_leaves=38, min_child_samples=5, learning_rate=0.06, n_estimators=480, colsample_bytree=0.45,
                       subsample=0.8, subsample_freq=1, reg_lambda=0.01, objective="huber", alpha=0.18,
                       extra_trees=True)

# LightGBM's size candidates by name (--lgbm_grid; config.LGBM_SIZE_GRID), each suiting a different split
# (docs/size_model.md): leaves of 3 rows, for recipes with a training sibling, alone (the paper split's inner folds);
# leaves of 20 rows, for new series and for the cpu preset's blend after the series correction; the best of an Optuna
# search on the grouped split's inner folds (bench/tune_lgbm_inner.py: randomised splits, bagging, a wider Huber loss).
LGBM_SIZE_CANDIDATES: dict[str, dict[str, Any]] = {
    "leaf3": dict(min_child_samples=3), "leaf20": dict(min_child_samples=20), "new_series": LGBM_NEW_SERIES}

# Grids tried in full (x WEAK_WEIGHTS), kept small so that a 5-fold run takes minutes on one core per fold. The fixed
# values were set beforehand by the same kind of inner cross-validation on training rows (never the held-out folds):
# for size, deep trees (small leaves) matter most, because many validation recipes have a training sibling that
# differs only in temperature or time.
GRIDS: dict[str, dict[str, list[dict[str, Any]]]] = {  # task -> model -> candidates
    "size": {"dt": [dict(min_samples_leaf=1), dict(min_samples_leaf=3), dict(min_samples_leaf=10)],
             "rf": [{}], "et": [{}], "hgb": [{}]},  # LightGBM: the candidates named by --lgbm_grid
    "shape": {"dt": [dict(min_samples_leaf=1), dict(min_samples_leaf=3), dict(min_samples_leaf=10)],
              "rf": [dict(max_features="sqrt"), dict(max_features=0.33)],
              "et": [dict(max_features=0.33), dict(max_features=1.0)],
              "hgb": [dict(max_leaf_nodes=15), dict(max_leaf_nodes=31)],
              "lgbm": [dict(num_leaves=15), dict(num_leaves=31)]},
}
FIXED: dict[str, dict[str, dict[str, Any]]] = {  # task -> model -> fixed parameters
    # extra trees: fully grown, every feature a candidate at each split (inner CV: 1.697 against 1.718 with half;
    # 100 trees 1.686, 200 trees 1.681 at twice the time and checkpoint size)
    "size": {"dt": {}, "rf": dict(n_estimators=100, max_features=0.33), "et": dict(n_estimators=100, max_features=1.0),
             "hgb": dict(max_iter=100, learning_rate=0.1, max_leaf_nodes=31, min_samples_leaf=3, max_features=0.3,
                         l2_regularization=1.0),
             "lgbm": dict(n_estimators=300, learning_rate=0.08, num_leaves=63, min_child_samples=3,
                          colsample_bytree=0.3, verbose=-1)},
    # Multiclass boosting grows one tree per class per round: fewer rounds for shape. An L2 penalty keeps the
    # multiclass leaves finite: without it, HistGradientBoosting's training accuracy collapsed to 0.3 on one fold and
    # LightGBM's inner error reached 0.3-0.7 (0.17 with it, inner CV of folds 0 and 3; 150 rounds at rate 0.1 scored
    # 0.15-0.16 but cost 2.5x the time).
    "shape": {"dt": {}, "rf": dict(n_estimators=100), "et": dict(n_estimators=100),
              "hgb": dict(max_iter=40, learning_rate=0.15, min_samples_leaf=5, max_features=0.3,
                          l2_regularization=1.0),
              "lgbm": dict(n_estimators=60, learning_rate=0.1, min_child_samples=5, colsample_bytree=0.3,
                           reg_lambda=1.0, verbose=-1)},
}
_ESTIMATORS = {
    ("dt", "size"): DecisionTreeRegressor, ("dt", "shape"): DecisionTreeClassifier,
    ("rf", "size"): RandomForestRegressor, ("rf", "shape"): RandomForestClassifier,
    ("et", "size"): ExtraTreesRegressor, ("et", "shape"): ExtraTreesClassifier,
    ("hgb", "size"): HistGradientBoostingRegressor, ("hgb", "shape"): HistGradientBoostingClassifier,
    ("lgbm", "size"): lgb.LGBMRegressor, ("lgbm", "shape"): lgb.LGBMClassifier,
}


@dataclass(frozen=True)
class Candidate:
    params: dict[str, Any]
    weak_weight: float


def grid(cfg: Config) -> list[dict[str, Any]]:
    """The parameters each fold's inner CV chooses from: the task's grid; for size, LightGBM's candidates named by
    `lgbm_grid`."""
    if (cfg.model, cfg.task) == ("lgbm", "size"):
        return [LGBM_SIZE_CANDIDATES[name] for name in cfg.lgbm_grid]
    return GRIDS[cfg.task][cfg.model]


def candidates(cfg: Config) -> list[Candidate]:
    return [Candidate(p, w) for p, w in product(grid(cfg), weak_weights(cfg.model, cfg.task))]


def make_estimator(model: str, task: str, params: dict[str, Any], seed: int, n_jobs: int):
    if (model, task) not in _ESTIMATORS:
        raise ValueError(f"unknown tree model {model!r} or task {task!r}; models: {', '.join(TREE_MODELS)}")
    values = {**FIXED[task][model], **params, "random_state": seed}
    if model in ("rf", "et", "lgbm"):
        values["n_jobs"] = n_jobs
    estimator = _ESTIMATORS[model, task](**values)
    if task == "size":
        forward, inverse = SIZE_TARGET
        return TransformedTargetRegressor(estimator, func=forward, inverse_func=inverse, check_inverse=False)
    return estimator


def featurizer(cfg: Config, store: DescriptorStore) -> RecipeFeaturizer:
    return RecipeFeaturizer(store, cfg.descriptor_pca, cfg.substance_columns, cfg.use_product, cfg.size_as_input,
                            cfg.seed, dict(package_chemistry()) if cfg.chemistry_features else None)


def n_threads(cfg: Config) -> int:
    # One thread unless asked: OpenMP/BLAS threads fighting over shared cores cost 10-100x here.
    return cfg.threads if cfg.threads > 0 else 1


# ---- targets and scores ---------------------------------------------------------------------------------------------

def targets(task: str, rows: pd.DataFrame) -> np.ndarray:
    """Size in nm, or the shape index (failures = n_shapes, one more class)."""
    return rows["Y1"].to_numpy(float) if task == "size" else rows["Y3"].to_numpy(int)


def predict(task: str, estimator, features: np.ndarray, n_shapes: int) -> dict[str, np.ndarray]:
    """Size: {"size"}. Shape: {"shape": (n, n_shapes) probabilities over the shapes, "failed": P(failed) or NaN when
    the model saw no failure}."""
    if task == "size":
        return {"size": estimator.predict(features)}
    proba = np.zeros((len(features), n_shapes + 1))
    proba[:, estimator.classes_] = estimator.predict_proba(features)
    shapes = proba[:, :n_shapes]
    total = shapes.sum(axis=1, keepdims=True)
    failed = proba[:, n_shapes] if n_shapes in estimator.classes_ else np.full(len(features), np.nan)
    return {"shape": np.divide(shapes, total, out=np.full_like(shapes, 1 / n_shapes), where=total > 0),
            "failed": failed}


def inner_score(task: str, rows: pd.DataFrame, prediction: dict[str, np.ndarray]) -> float:
    """Lower is better: MAE for size, 1 - accuracy for shape."""
    truth = targets(task, rows)
    if task == "size":
        return size_metrics(truth, prediction["size"])["mae"]
    return 1.0 - shape_metrics(truth, prediction["shape"].argmax(axis=1), prediction["shape"].shape[1])["accuracy"]


# ---- inner cross-validation -----------------------------------------------------------------------------------------

def inner_splits(cfg: Config, train: pd.DataFrame, weak: np.ndarray, n_splits: int = INNER_FOLDS,
                 always_fit: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, score rows) positions into `train`; every row of a scored group leaves the fit rows. Rows marked
    `always_fit` are never scored."""
    pool = inner_pool(cfg, train, weak)
    pool = np.flatnonzero(pool if always_fit is None else pool & ~always_fit)
    groups = inner_groups(cfg, train)
    n_splits = min(n_splits, len(np.unique(groups[pool])))
    if n_splits < 2:
        raise ValueError(f"inner validation needs 2 groups of training rows like the validation rows, got {n_splits}")
    splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=cfg.seed)
    progress = Progress(n_splits, f"{cfg.model} inner CV", unit="folds")  # a bar on a terminal: trees take minutes
    for _, scored in progress.iterate(splitter.split(pool, groups=groups[pool])):
        held_out = np.isin(groups, np.unique(groups[pool[scored]]))
        yield np.flatnonzero(~held_out), pool[scored]


def few_shot_splits(cfg: Config, train: pd.DataFrame, weak: np.ndarray, shots: np.ndarray
                    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Inner folds of a few-shot fold that are few-shot folds themselves: (fit rows, score rows, the fit rows' shot
    mask). The held-out product's recipes (`shots`) always train; each scored product lends `cfg.shots` of its
    scored recipes, drawn at random, to the fit rows, where they weigh as shots, and its other recipes are scored.
    A product with no more recipes than that is not scored: its rows return to the fit rows."""
    rng = np.random.default_rng([cfg.seed, cfg.shots])
    products = inner_groups(cfg, train)
    for fit_rows, scored_rows in inner_splits(cfg, train, weak, always_fit=shots):
        lent, returned = [], []
        for name in np.unique(products[scored_rows]):
            rows = scored_rows[products[scored_rows] == name]
            if len(rows) <= cfg.shots:
                returned.append(np.flatnonzero(products == name))
            else:
                lent.append(rng.permutation(rows)[:cfg.shots])
        lent_rows, returned_rows = (np.concatenate(r) if r else np.zeros(0, int) for r in (lent, returned))
        moved = np.concatenate([lent_rows, returned_rows])
        fit = np.sort(np.concatenate([fit_rows, moved]))
        yield fit, np.setdiff1d(scored_rows, moved), shots[fit] | np.isin(fit, lent_rows)


def fit_predict(cfg: Config, store: DescriptorStore, train: pd.DataFrame, weak: np.ndarray, tests: list[pd.DataFrame],
                choices: list[Candidate], n_shapes: int, shots: np.ndarray | None = None
                ) -> list[list[dict[str, np.ndarray]]]:
    """Featurize once (fitted on `train` only), then for each candidate fit and predict every table of `tests`."""
    features = featurizer(cfg, store).fit(train)
    x_train = features.transform(train)
    x_tests = [features.transform(t) for t in tests]
    y_train = targets(cfg.task, train)
    results = []
    for choice in choices:
        estimator = fit_estimator(cfg, choice, x_train, y_train, weak, shots=shots)
        results.append([predict(cfg.task, estimator, x, n_shapes) for x in x_tests])
    return results


def loss_params(cfg: Config) -> dict[str, Any]:
    """--lgbm_huber_delta: LightGBM's size loss on log(size) becomes Huber. Alone it scores worse than squared error,
    but its training residuals leave more for the series correction (inner CV, docs/size_model.md)."""
    if cfg.model == "lgbm" and cfg.task == "size" and cfg.lgbm_huber_delta > 0:
        return {"objective": "huber", "alpha": cfg.lgbm_huber_delta}
    return {}


def sample_weights(cfg: Config, choice: Candidate, weak: np.ndarray, shots: np.ndarray | None) -> np.ndarray | None:
    """A weak row weighs the candidate's weak-row weight, a recipe of the held-out product in a few-shot fold
    (`shots`) `cfg.shot_weight` times its weight; None when every row weighs 1 (HistGradientBoosting is 2-3x slower
    with weights)."""
    weights = np.where(weak, choice.weak_weight, 1.0)
    if shots is not None:
        weights = np.where(shots, cfg.shot_weight * weights, weights)
    return None if np.all(weights == 1.0) else weights


def fit_estimator(cfg: Config, choice: Candidate, x_train: np.ndarray, y_train: np.ndarray, weak: np.ndarray,
                  seed: int | None = None, shots: np.ndarray | None = None):
    params = {**loss_params(cfg), **choice.params}  # a candidate with its own loss keeps it
    estimator = make_estimator(cfg.model, cfg.task, params, cfg.seed if seed is None else seed, n_threads(cfg))
    return estimator.fit(x_train, y_train, sample_weight=sample_weights(cfg, choice, weak, shots))


def select(cfg: Config, store: DescriptorStore, train: pd.DataFrame, weak: np.ndarray,
           n_shapes: int, shots: np.ndarray | None = None) -> tuple[Candidate, list[dict[str, Any]]]:
    """The candidate with the best mean inner score, and every candidate's scores."""
    choices = candidates(cfg)
    scores = np.zeros((len(choices), 0))
    # a few-shot fold's candidates are judged on few-shot inner folds: a model good for a product it has never seen
    # need not make the most of a product's first recipes
    splits = (few_shot_splits(cfg, train, weak, shots) if shots is not None
              else ((fit, scored, None) for fit, scored in inner_splits(cfg, train, weak)))
    for fit_rows, scored_rows, fit_shots in splits:
        scored = train.iloc[scored_rows]
        predictions = fit_predict(cfg, store, train.iloc[fit_rows], weak[fit_rows], [scored], choices, n_shapes,
                                  fit_shots)
        fold_scores = [inner_score(cfg.task, scored, p[0]) for p in predictions]
        scores = np.column_stack([scores, fold_scores])
    means = scores.mean(axis=1)
    table = [{"params": c.params, "weak_weight": c.weak_weight, "inner_score": float(m)} for c, m in zip(choices, means)]
    return choices[int(np.argmin(means))], table


def selection_summary(cfg: Config) -> str:
    """One line for metrics.json: how a tree run chose its hyper-parameters."""
    params = grid(cfg)
    weights = weak_weights(cfg.model, cfg.task)
    axes = ([f"parameters in {params}"] if len(params) > 1 else []) + (
        [f"weak-row weight in {list(weights)}"] if len(weights) > 1 else [])
    chosen = f"grid ({' x '.join(axes)})" if axes else "nothing to choose (fixed parameters)"
    return f"{chosen} by {INNER_FOLDS}-fold inner CV on each fold's training rows; refit on all of them"


def model_seeds(cfg: Config) -> list[int]:
    """LightGBM is refitted with `lgbm_seeds` seeds and averaged: its column sampling makes one fit noisy (inner CV,
    docs/size_model.md). The forests already average their trees."""
    return [cfg.seed + k for k in range(cfg.lgbm_seeds if cfg.model == "lgbm" else 1)]


def predict_mean(task: str, estimators: list, features: np.ndarray, n_shapes: int) -> dict[str, np.ndarray]:
    """`predict` of several fits of one model: the geometric mean of the sizes (the size models are means of
    log(size)), the mean of the shape and failure probabilities."""
    each = [predict(task, estimator, features, n_shapes) for estimator in estimators]
    if task == "size":
        return {"size": np.exp(np.mean([np.log(e["size"]) for e in each], axis=0))}
    return {key: np.mean([e[key] for e in each], axis=0) for key in each[0]}


@dataclass
class FittedTree:
    """A tree model refitted on all of a fold's training rows with its inner-CV choice (one fit per seed)."""
    features: RecipeFeaturizer
    estimators: list[Any]
    candidate: Candidate
    selection: dict[str, Any]

    def predict(self, cfg: Config, table: pd.DataFrame, n_shapes: int) -> dict[str, np.ndarray]:
        with threadpool_limits(limits=n_threads(cfg)):
            return predict_mean(cfg.task, self.estimators, self.features.transform(table), n_shapes)

    def log_members(self, cfg: Config, table: pd.DataFrame) -> np.ndarray:
        """Size: (rows, members) log(size) of every member: a forest's trees, LightGBM's seeds, else the model."""
        x = self.features.transform(table)
        with threadpool_limits(limits=n_threads(cfg)):
            return np.column_stack([member.predict(x) for estimator in self.estimators
                                    for member in getattr(estimator.regressor_, "estimators_", [estimator.regressor_])])


def fit_chosen(cfg: Config, train: pd.DataFrame, weak: np.ndarray, store: DescriptorStore, candidate: Candidate,
               selection: dict[str, Any] | None = None, shots: np.ndarray | None = None) -> FittedTree:
    """`cfg.model` with a chosen candidate, fitted on `train` (featurizer included), one fit per seed."""
    with threadpool_limits(limits=n_threads(cfg)):
        features = featurizer(cfg, store).fit(train)
        x_train, y_train = features.transform(train), targets(cfg.task, train)
        estimators = [fit_estimator(cfg, candidate, x_train, y_train, weak, seed, shots) for seed in model_seeds(cfg)]
    return FittedTree(features, estimators, candidate, selection or {})


def fit_selected(cfg: Config, data, store: DescriptorStore, n_shapes: int) -> FittedTree:
    """Choose on inner validation of `data.train` (a runs.FoldData), then refit on all of it."""
    if cfg.augmented:
        # augmented rows lose their source ID in FoldData, so the inner split could not keep a row and its copies apart
        raise ValueError("tree models do not take augmented rows (--augmented); run them on the original rows")
    weak = np.asarray(data.train_weak, dtype=bool)
    with threadpool_limits(limits=n_threads(cfg)):
        best, table = select(cfg, store, data.train, weak, n_shapes, data.train_shots)
    selection = {
        "summary": selection_summary(cfg),
        "inner_metric": "1 - accuracy" if cfg.task == "shape" else "mae",
        "params": {**FIXED[cfg.task][cfg.model], **loss_params(cfg), **best.params},
        "weak_weight": best.weak_weight,
        "seeds": model_seeds(cfg),
        "candidates": table,
    }
    return fit_chosen(cfg, data.train, weak, store, best, selection, data.train_shots)


# ---- trees beside the transformer (--tree_blend, --blend_models) -----------------------------------------------------

def forest_state(estimator) -> dict[str, torch.Tensor]:
    """A fitted sklearn forest's trees as flat tensors (torch.load(weights_only=True) reads them): for every node its
    children (absolute indices; a leaf points at itself), split feature and threshold, where a missing value goes,
    and the leaf value (mean size, or class fractions)."""
    lefts, rights, features, thresholds, missing_left, values, roots = [], [], [], [], [], [], []
    offset = 0
    for tree in (t.tree_ for t in estimator.estimators_):
        nodes = np.arange(tree.node_count)
        leaf = tree.children_left < 0
        lefts.append(np.where(leaf, nodes, tree.children_left) + offset)
        rights.append(np.where(leaf, nodes, tree.children_right) + offset)
        features.append(np.where(leaf, 0, tree.feature))
        thresholds.append(tree.threshold)
        missing_left.append(np.asarray(tree.missing_go_to_left, bool))
        values.append(tree.value[:, 0, :])
        roots.append(offset)
        offset += tree.node_count
    arrays = {"left": lefts, "right": rights, "feature": features, "threshold": thresholds,
              "missing_left": missing_left, "value": values}
    state = {name: torch.from_numpy(np.concatenate(parts)) for name, parts in arrays.items()}
    for name in ("left", "right", "feature"):  # int32: a fold's 100 extra trees take about 17 MB
        state[name] = state[name].to(torch.int32)
    state["roots"] = torch.as_tensor(roots, dtype=torch.long)
    state["depth"] = torch.tensor(max(t.tree_.max_depth for t in estimator.estimators_))
    return state


@dataclass(frozen=True)
class Forest:
    """Prediction from `forest_state`: each row walks every tree at once, one level per step. Equals the sklearn
    forest's predict (regression) or predict_proba (classification); tests check it."""
    state: dict[str, np.ndarray]
    classifier: bool

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], classifier: bool) -> "Forest":
        return cls({name: value.numpy() for name, value in state.items()}, classifier)

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """(rows, trees, outputs): each tree's leaf value for each row."""
        s = self.state
        x = np.asarray(x, dtype=np.float32)  # sklearn trees compare float32 inputs with their thresholds
        rows = np.arange(len(x))[:, None]
        node = np.broadcast_to(s["roots"], (len(x), len(s["roots"]))).copy()
        for _ in range(int(s["depth"])):
            value = x[rows, s["feature"][node]]
            go_left = np.where(np.isnan(value), s["missing_left"][node], value <= s["threshold"][node])
            node = np.where(go_left, s["left"][node], s["right"][node])
        return s["value"][node]

    def predict(self, x: np.ndarray) -> np.ndarray:
        leaves = self.leaves(x)
        if not self.classifier:
            return leaves[..., 0].mean(axis=1)
        return (leaves / leaves.sum(axis=2, keepdims=True)).mean(axis=1)


def blend_rows(cfg: Config, data):
    """The rows the blend's tree models fit: the recipe table's own rows (no augmented ones); for shape without the
    failed syntheses, as baselines.sh (on inner validation they did not help, and cost 2.5x the time)."""
    keep = ~data.train_augmented
    if cfg.task == "shape":
        keep &= ~data.train["failed"].to_numpy()
    return data.take(keep)


def blend_configs(cfg: Config) -> list[Config]:
    """One config per model of `cfg.blend_models`: each is chosen and fitted as `--model <name>` would be."""
    return [replace(cfg, model=model, augmented="") for model in cfg.blend_models]


def fit_blend(cfg: Config, data, store: DescriptorStore, n_shapes: int) -> list[FittedTree]:
    """The fold's models of `cfg.blend_models`, each chosen by inner CV and fitted on `blend_rows`."""
    rows = blend_rows(cfg, data)
    return [fit_selected(model_cfg, rows, store, n_shapes) for model_cfg in blend_configs(cfg)]


def blend_state(cfg: Config, fitted: list[FittedTree]) -> list[dict[str, Any]]:
    """`fit_blend`'s models as checkpoint entries that `torch.load(weights_only=True)` reads back: the featurizer's
    state, the model (LightGBM's own text, or a forest's tensors), the classes it saw and its selection."""
    entries = []
    for model, tree in zip(cfg.blend_models, fitted):
        estimators = [e.regressor_ if cfg.task == "size" else e for e in tree.estimators]
        saved = ({"boosters": [e.booster_.model_to_string() for e in estimators]} if model == "lgbm"
                 else {"forest": forest_state(estimators[0])})
        classes = getattr(estimators[0], "classes_", np.zeros(0, int))
        entries.append({"model": model, "features": tree.features.to_state(), **saved,
                        "classes": torch.as_tensor(classes, dtype=torch.long), "selection": json.dumps(tree.selection)})
    return entries


@dataclass(frozen=True)
class BlendModel:
    """One fold's --tree_blend model rebuilt from its checkpoint entry, parsed once for many predictions."""
    features: RecipeFeaturizer
    models: list[lgb.Booster] | list[Forest]  # LightGBM: one booster per seed, averaged
    classes: np.ndarray  # shape task: the classes the model's columns stand for; empty for size
    n_shapes: int

    @classmethod
    def from_state(cls, state: dict[str, Any], store: DescriptorStore, n_shapes: int) -> "BlendModel":
        classes = state["classes"].numpy()
        if "forest" in state:
            models = [Forest.from_state(state["forest"], classifier=bool(len(classes)))]
        else:  # "booster": one LightGBM model, written before lgbm_seeds
            texts = state["boosters"] if "boosters" in state else [state["booster"]]
            models = [lgb.Booster(model_str=text) for text in texts]
        return cls(RecipeFeaturizer.from_state(state["features"], store), models, classes, n_shapes)

    def predict(self, table: pd.DataFrame) -> np.ndarray:
        """Size in nm, or (rows, n_shapes) shape probabilities."""
        x = self.features.transform(table)
        with threadpool_limits(limits=1):  # the mean over seeds of log(size), or of the shape probabilities
            raw = np.mean([m.predict(x, num_threads=1) if isinstance(m, lgb.Booster) else m.predict(x)
                           for m in self.models], axis=0)
        if not len(self.classes):
            return SIZE_TARGET[1](raw)
        proba = np.zeros((len(table), self.n_shapes))
        proba[:, self.classes] = raw
        return proba

    def log_members(self, table: pd.DataFrame) -> np.ndarray:
        """Size: (rows, members) log(size) of every member (a forest's trees, LightGBM's seeds), as
        `FittedTree.log_members` gives them for the same model fitted in sklearn form."""
        x = self.features.transform(table)
        with threadpool_limits(limits=1):
            return np.column_stack([m.predict(x, num_threads=1)[:, None] if isinstance(m, lgb.Booster)
                                    else m.leaves(x)[..., 0] for m in self.models])


@dataclass(frozen=True)
class TreeBlend:
    """A fold's tree models for --tree_blend; their mean (size in nm, or shape probabilities) is what is blended."""
    models: list[BlendModel]

    @classmethod
    def from_state(cls, entries: list[dict[str, Any]], store: DescriptorStore, n_shapes: int) -> "TreeBlend":
        return cls([BlendModel.from_state(entry, store, n_shapes) for entry in entries])

    def predict(self, table: pd.DataFrame) -> np.ndarray:
        return np.mean([model.predict(table) for model in self.models], axis=0)

    def with_substances(self, vectors: dict[str, np.ndarray],
                        chemistry: dict[str, tuple[str, str]] | None = None) -> "TreeBlend":
        """The same models, their features also describing `vectors`' substances (predict's new substances) and
        `chemistry`'s (formula, kind) where they read them."""
        return TreeBlend([replace(m, features=m.features.with_substances(vectors, chemistry)) for m in self.models])

    def log_spread(self, table: pd.DataFrame) -> np.ndarray:
        """Size: the mean over the models of the spread (standard deviation) of their members' log(size)."""
        return member_spread([model.log_members(table) for model in self.models])


def member_spread(log_members: list[np.ndarray]) -> np.ndarray:
    """The mean over models of the standard deviation of their members' log(size): a difficulty of the recipe
    (members disagree where training rows are few or conflicting). A model with one member adds 0."""
    return np.mean([members.std(axis=1) for members in log_members], axis=0)
