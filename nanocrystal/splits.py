"""Folds over the combined table (recipes then failures): paper, grouped (recipe series) and leave-one-product-out."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold

from .config import Config
from .errors import InputError
from .recipes import MAX_EVAL_SIZE_NM, PRODUCT_NAME, Dataset, evaluation_mask, has_size, is_solid, series_keys


class SplitError(InputError, ValueError):
    pass


@dataclass(frozen=True)
class Fold:
    index: int
    name: str  # "fold0".. or the held-out product
    train: np.ndarray  # positions in the combined table, before task-specific pool filtering
    valid: np.ndarray


def combined_table(dataset: Dataset) -> pd.DataFrame:
    return pd.concat([dataset.recipes, dataset.failures], ignore_index=True)


def paper_folds(table: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> list[Fold]:
    """Upstream's split: seeded KFold over the evaluation rows in file order; training is every other row."""
    evaluation = np.flatnonzero(evaluation_mask(table).to_numpy())
    splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for k, (_, valid_local) in enumerate(splitter.split(evaluation)):
        valid = evaluation[valid_local]
        train = np.setdiff1d(np.arange(len(table)), valid)
        folds.append(Fold(k, f"fold{k}", train, valid))
    return folds


def grouped_folds(table: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> list[Fold]:
    """Folds by recipe series; every row of a series with a validation row leaves training."""
    keys = series_keys(table).to_numpy()
    evaluation = np.flatnonzero(evaluation_mask(table).to_numpy())
    splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for k, (_, valid_local) in enumerate(splitter.split(evaluation, groups=keys[evaluation])):
        valid = evaluation[valid_local]
        held_out = np.isin(keys, np.unique(keys[valid]))
        train = np.flatnonzero(~held_out)
        folds.append(Fold(k, f"fold{k}", train, valid))
    return folds


def product_folds(table: pd.DataFrame, products: list[str], shots: int = 0, draws: int = 1,
                  seed: int = 0) -> list[Fold]:
    """Leave-one-product-out: validation = product P with 0 < size <= 20 nm (any Num); training = other products.
    With `shots` k > 0 (few-shot: a chemist's first syntheses of a new material), `draws` folds per product: k of
    P's sized recipes, drawn at random, join the training rows and the validation rows are P's other sized recipes.
    A draw's k recipes are the first k of one random order of P's recipes, so a draw's 1, 3 and 5 shots are nested."""
    folds = []
    for p, product in enumerate(products):
        is_product = (table[PRODUCT_NAME] == product).to_numpy()
        if not is_product.any():
            raise SplitError(f"--object_name {product!r}: no recipe has this product")
        sized = np.flatnonzero(is_product & has_size(table).to_numpy())
        if not shots:
            folds.append(Fold(len(folds), product, np.flatnonzero(~is_product), sized))
            continue
        if shots >= len(sized):
            raise SplitError(f"--shots {shots}: {product} has {len(sized)} sized recipes; leave some to score")
        for draw in range(draws):
            order = np.random.default_rng([seed, p, draw]).permutation(sized)
            shot_rows = np.sort(order[:shots])
            folds.append(Fold(len(folds), f"{product}-{shots}shot-{draw}",
                              np.sort(np.concatenate([np.flatnonzero(~is_product), shot_rows])),
                              np.sort(order[shots:])))
    return folds


def make_folds(table: pd.DataFrame, split: str, n_folds: int, seed: int, products: list[str], shots: int = 0,
               draws: int = 1) -> list[Fold]:
    if products:
        return product_folds(table, products, shots, draws, seed)
    if shots:
        raise SplitError("--shots needs --object_name (few-shot is leave-one-product-out with k recipes of the product)")
    if split not in ("paper", "grouped"):
        raise SplitError(f"unknown split {split!r}; choose paper or grouped")
    try:
        return (paper_folds if split == "paper" else grouped_folds)(table, n_folds, seed)
    except ValueError as error:  # scikit-learn's: more folds than evaluation rows (or series)
        raise SplitError(f"--n_folds {n_folds}: {error}") from None


def run_folds(cfg: Config, table: pd.DataFrame) -> list[Fold]:
    """The folds of a run's config."""
    return make_folds(table, cfg.split, cfg.n_folds, cfg.seed, cfg.object_name, cfg.shots, cfg.shot_draws)


def task_rows(table: pd.DataFrame, positions: np.ndarray, task: str, use_weak: bool = True,
              use_large: bool = True, use_failures: bool = True) -> np.ndarray:
    """The rows of `positions` a task trains on. Size: rows with 0 < size <= 20 nm (no other row has a size loss).
    Shape: recipes (large ones if use_large) plus failed syntheses if use_failures."""
    rows = table.iloc[positions]
    solid = is_solid(rows) & ~rows["failed"]
    keep = pd.Series(True, index=rows.index)
    if not use_weak:
        keep &= solid | rows["failed"]
    if task == "size":
        keep &= has_size(rows) & ~rows["failed"]
    elif task == "shape":
        if not use_failures:
            keep &= ~rows["failed"]
        if not use_large:
            keep &= ~(rows["Y1"] > MAX_EVAL_SIZE_NM)
    else:
        raise ValueError(f"unknown task {task!r}; choose size or shape")
    return positions[keep.to_numpy()]


def inner_pool(cfg: Config, train: pd.DataFrame, weak: np.ndarray) -> np.ndarray:
    """Training rows like the outer validation rows: solid with 0 < size <= 20 (any Num with a size for
    leave-one-product-out, whose validation rows are)."""
    like = has_size(train).to_numpy() & ~train["failed"].to_numpy()
    return like if cfg.object_name else like & ~weak


def inner_groups(cfg: Config, train: pd.DataFrame) -> np.ndarray:
    """What must not straddle inner training and validation, as in the outer split."""
    if cfg.object_name:
        return train[PRODUCT_NAME].to_numpy(object)
    if cfg.split == "grouped":
        return series_keys(train).to_numpy(object)
    return np.arange(len(train))
