"""Series correction of a size prediction: a recipe whose series (same product, reagents and amounts; only temperature,
time or heating rate differ) has training rows gets its prediction moved by those siblings' residuals.

A fold's model leaves residuals on its own training rows (the transformer underfits them, LightGBM down-weights weak
rows; fully grown extra trees leave none). Siblings of a new recipe share most of them, so for a recipe with siblings

    size_nm = predicted_nm * exp(sum_i w_i r_i / (sum_i w_i + shrink)),  r_i = log(size_i / predicted_i),
    w_i = exp(-d_i / scale),  d_i = L1 distance of the conditions in CONDITION_UNITS,

and a recipe without siblings keeps its prediction. Siblings are the training rows of the same series with a size
(0 < size <= 20 nm), weak ones included. Scale and shrink were chosen on inner cross-validation over the training
rows of the paper split (docs/size_model.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from .recipes import CONDITION_COLUMNS, has_size, series_keys

# one unit of distance: 20 degC of either temperature, 5 degC/min of heating rate, a factor e in time
CONDITION_UNITS = {"Temperature1": 20.0, "Temperature2": 20.0, "Speed": 5.0}


def scaled_conditions(table: pd.DataFrame) -> np.ndarray:
    columns = [table[c].to_numpy(np.float64) / CONDITION_UNITS[c] for c in CONDITION_COLUMNS if c != "Time"]
    return np.column_stack([*columns, np.log1p(np.maximum(table["Time"].to_numpy(np.float64), 0.0))])


def series_groups(keys: np.ndarray) -> dict[str, np.ndarray]:
    """Series key -> the positions of the candidates with that key."""
    return pd.Series(np.arange(len(keys))).groupby(keys).indices if len(keys) else {}


def siblings(groups: dict[str, np.ndarray], conditions: np.ndarray, table: pd.DataFrame, scale: float
             ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For each row of `table` whose series has candidates (`groups`: their series_groups, `conditions`: their
    `scaled_conditions`): (row, the candidates' positions, their weights exp(-d / scale)), d the L1 distance of the
    scaled conditions."""
    if not len(table) or not groups:
        return
    scaled = scaled_conditions(table)
    for row, key in enumerate(series_keys(table).to_numpy(object)):
        found = groups.get(key)
        if found is not None:
            yield row, found, np.exp(-np.abs(conditions[found] - scaled[row]).sum(axis=1) / scale)


@dataclass(frozen=True)
class SeriesCorrection:
    keys: np.ndarray  # series key of each sibling candidate (training rows with a size)
    conditions: np.ndarray  # their scaled conditions
    log_residuals: np.ndarray  # log(true / predicted) on them
    scale: float
    shrink: float

    @classmethod
    def fit(cls, train: pd.DataFrame, predicted_nm: np.ndarray, scale: float, shrink: float) -> "SeriesCorrection":
        """`predicted_nm`: the fold's final prediction for its own training rows `train`."""
        if scale <= 0 or shrink < 0:
            raise ValueError(f"series correction needs scale > 0 and shrink >= 0, got {scale} and {shrink}")
        keep = has_size(train).to_numpy() & (np.asarray(predicted_nm) > 0)
        rows = train[keep]
        residuals = np.log(rows["Y1"].to_numpy(np.float64)) - np.log(np.asarray(predicted_nm, np.float64)[keep])
        return cls(series_keys(rows).to_numpy(object), scaled_conditions(rows), residuals, scale, shrink)

    @cached_property
    def groups(self) -> dict[str, np.ndarray]:
        """Built once: predict and the app ask for the factors of a few recipes at a time."""
        return series_groups(self.keys)

    def factors(self, table: pd.DataFrame) -> np.ndarray:
        """The multiplicative correction of each row of `table` (1 for a recipe without training siblings)."""
        out = np.ones(len(table))
        for row, found, weights in siblings(self.groups, self.conditions, table, self.scale):
            total = weights.sum() + self.shrink
            if total > 0:  # all siblings so far that their weights underflow, and no shrink: no correction
                out[row] = np.exp((weights * self.log_residuals[found]).sum() / total)
        return out

    # ---- checkpoint state: strings, tensors and numbers (torch.load(weights_only=True) reads it) --------------------

    def to_state(self) -> dict:
        return {"keys": [str(k) for k in self.keys], "conditions": torch.from_numpy(self.conditions),
                "log_residuals": torch.from_numpy(self.log_residuals), "scale": self.scale, "shrink": self.shrink}

    @classmethod
    def from_state(cls, state: dict) -> "SeriesCorrection":
        return cls(np.asarray(state["keys"], dtype=object), state["conditions"].numpy(),
                   state["log_residuals"].numpy(), float(state["scale"]), float(state["shrink"]))


@dataclass(frozen=True)
class Siblings:
    """A model's training rows with a size, by recipe series: whether a recipe's series has training rows (seen), and
    how close they are (proximity: the sum of exp(-d / scale) over them, the series correction's weights)."""
    keys: np.ndarray
    conditions: np.ndarray
    scale: float

    @classmethod
    def of(cls, train: pd.DataFrame, scale: float) -> "Siblings":
        rows = train[has_size(train).to_numpy()]
        return cls(series_keys(rows).to_numpy(object), scaled_conditions(rows), scale)

    @cached_property
    def groups(self) -> dict[str, np.ndarray]:
        """Built once, as SeriesCorrection.groups."""
        return series_groups(self.keys)

    def proximity(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(seen, proximity) of each row of `table`."""
        seen, proximity = np.zeros(len(table), bool), np.zeros(len(table))
        for row, _, weights in siblings(self.groups, self.conditions, table, self.scale):
            seen[row], proximity[row] = True, weights.sum()
        return seen, proximity

    def to_state(self) -> dict:
        return {"keys": [str(k) for k in self.keys], "conditions": torch.from_numpy(self.conditions),
                "scale": self.scale}

    @classmethod
    def from_state(cls, state: dict) -> "Siblings":
        return cls(np.asarray(state["keys"], dtype=object), state["conditions"].numpy(), float(state["scale"]))
