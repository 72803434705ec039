"""Rows + descriptors -> tensors. The fitted scalers live in an `Encoder`, saved in every checkpoint."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
from sklearn.preprocessing import RobustScaler, StandardScaler

from .descriptors import DescriptorStore
from .recipes import (EMPTY_NAME, MAX_EVAL_SIZE_NM, PRODUCT_AMOUNT, PRODUCT_NAME, is_solid,
                      substance_amounts, substance_names)

MEASURED_SIZE = "measured_size"
# Scaled amounts and conditions are clipped here: the training values lie within a few hundred, and a value that
# passes validation (finite in float32) but lies far beyond them (out of domain for predict) stays finite through the
# models' float32 products (a heating rate of 3e38 °C/min would otherwise become inf, then NaN).
MAX_SCALED = 1e6


@dataclass
class Encoder:
    """Vocabulary and scalers fitted on one fold's training rows; plain lists so checkpoints load with weights_only."""
    vocabulary: list[str]  # index -> substance name; 0 = PlaceHolder (padding)
    amount_scaling: str  # log | robust
    amount_center: float
    amount_scale: float
    condition_names: list[str]
    condition_center: list[float]
    condition_scale: list[float]
    use_product: bool
    size_center: float = 0.0  # the size head predicts (size - center) / scale
    size_scale: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    def with_substances(self, names: list[str]) -> "Encoder":
        """The same encoder with `names` appended to the vocabulary (see RecipeModel.add_substances)."""
        return replace(self, vocabulary=[*self.vocabulary, *names])

    @classmethod
    def from_dict(cls, values: dict) -> "Encoder":
        return cls(**values)


def _raw_conditions(table: pd.DataFrame, size_as_input: bool) -> tuple[list[str], np.ndarray]:
    # log time: 0.0166 min to 14,400 min spans six decades; heating rate is mostly 0
    columns = {
        "Temperature1": table["Temperature1"].to_numpy(float),
        "Temperature2": table["Temperature2"].to_numpy(float),
        "log_time": np.log1p(table["Time"].to_numpy(float)),
        "Speed": table["Speed"].to_numpy(float),
    }
    if size_as_input:
        columns[MEASURED_SIZE] = np.log(np.clip(table["Y1"].to_numpy(float), 0.1, None))
    return list(columns), np.stack(list(columns.values()), axis=1)


def _amount_transform(amount_mmol: np.ndarray, scaling: str) -> np.ndarray:
    return np.log(amount_mmol) if scaling == "log" else amount_mmol


def fit_encoder(train: pd.DataFrame, store: DescriptorStore, amount_scaling: str, use_product: bool,
                size_as_input: bool) -> Encoder:
    """Fit every scaler on the training rows only (upstream fits on all rows, validation included)."""
    if amount_scaling not in ("log", "robust"):
        raise ValueError(f"unknown amount_scaling {amount_scaling!r}; choose log or robust")
    amounts = substance_amounts(train)
    present = _amount_transform(amounts[amounts > 0], amount_scaling).reshape(-1, 1)
    # log amounts are roughly normal; raw amounts are heavy-tailed, so upstream's robust scaler
    amount_scaler = (StandardScaler() if amount_scaling == "log" else RobustScaler()).fit(present)
    names, conditions = _raw_conditions(train, size_as_input)
    condition_scaler = RobustScaler().fit(conditions)
    scale = np.where(condition_scaler.scale_ > 0, condition_scaler.scale_, 1.0)
    vocabulary = [EMPTY_NAME] + sorted(n for n in store.vectors if n != EMPTY_NAME)
    sizes = train["Y1"].to_numpy(float)
    sizes = sizes[(sizes > 0) & (sizes <= MAX_EVAL_SIZE_NM)]
    return Encoder(
        vocabulary=vocabulary,
        amount_scaling=amount_scaling,
        amount_center=float(np.ravel(getattr(amount_scaler, "mean_", getattr(amount_scaler, "center_", [0])))[0]),
        amount_scale=float(np.ravel(amount_scaler.scale_)[0]) or 1.0,
        condition_names=names,
        condition_center=condition_scaler.center_.tolist(),
        condition_scale=scale.tolist(),
        use_product=use_product,
        size_center=float(sizes.mean()) if len(sizes) else 0.0,
        size_scale=float(sizes.std()) if len(sizes) > 1 else 1.0,
    )


def descriptor_matrix(encoder: Encoder, store: DescriptorStore) -> torch.Tensor:
    return torch.from_numpy(np.stack([store.get(name) for name in encoder.vocabulary]))


@dataclass
class Batch:
    substance_ids: torch.Tensor  # (N, S) int64 index into the vocabulary; 0 = empty or no descriptor
    amounts: torch.Tensor  # (N, S) scaled amount
    present: torch.Tensor  # (N, S) bool: a real token (not padding)
    is_product: torch.Tensor  # (N, S) bool: the product token
    conditions: torch.Tensor  # (N, C) scaled
    size_nm: torch.Tensor  # (N,) -1 where unknown
    shape: torch.Tensor  # (N,) int64 shape index; n_shapes = failed
    weak: torch.Tensor  # (N,) bool: a weak size label (tolerance band)

    def __len__(self) -> int:
        return self.size_nm.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def index(self, rows: torch.Tensor) -> "Batch":
        return Batch(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    def chunks(self, size: int) -> Iterator["Batch"]:
        """Consecutive pieces of at most `size` rows, in order (inference on large tables)."""
        for start in range(0, len(self), size):
            yield self.index(torch.arange(start, min(start + size, len(self))))


def unknown_substances(table: pd.DataFrame, encoder: Encoder) -> dict[str, int]:
    known = set(encoder.vocabulary)
    names = np.concatenate([substance_names(table).ravel(), table[PRODUCT_NAME].to_numpy(object)])
    values, counts = np.unique(names[~np.isin(names, list(known))], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def encode(table: pd.DataFrame, encoder: Encoder, weak: np.ndarray | None = None) -> Batch:
    """Encode rows. Substances without a descriptor become empty tokens (callers report or refuse them first).
    `weak` marks rows whose size label gets the tolerance band (default: Num < 300)."""
    index = {name: i for i, name in enumerate(encoder.vocabulary)}
    names = np.concatenate([substance_names(table), table[[PRODUCT_NAME]].to_numpy(object)], axis=1)
    amounts = np.concatenate([substance_amounts(table), table[[PRODUCT_AMOUNT]].to_numpy(float)], axis=1)
    ids = np.vectorize(lambda n: index.get(n, 0), otypes=[np.int64])(names)
    if not encoder.use_product:
        ids[:, -1] = 0
    present = (ids > 0) | ((amounts > 0) & (names != EMPTY_NAME))
    present[:, -1] = encoder.use_product & (names[:, -1] != EMPTY_NAME)
    safe = np.where(amounts > 0, amounts, 1.0)
    scaled = (_amount_transform(safe, encoder.amount_scaling) - encoder.amount_center) / encoder.amount_scale
    is_product = np.zeros_like(present)
    is_product[:, -1] = True
    # Present tokens first, then cut the padding columns no row uses: attention cost grows with the slot count.
    order = np.argsort(~present, axis=1, kind="stable")
    width = max(1, int(present.sum(1).max()))
    ids, scaled, present, is_product = (np.take_along_axis(a, order, axis=1)[:, :width]
                                        for a in (ids, scaled, present, is_product))
    scaled = np.clip(np.where(present, scaled, 0.0), -MAX_SCALED, MAX_SCALED)
    ids = np.where(present, ids, 0)
    _, conditions = _raw_conditions(table, MEASURED_SIZE in encoder.condition_names)
    conditions = np.clip((conditions - np.array(encoder.condition_center)) / np.array(encoder.condition_scale),
                         -MAX_SCALED, MAX_SCALED)
    if weak is None:
        weak = ~is_solid(table).to_numpy()
    return Batch(
        substance_ids=torch.from_numpy(ids),
        amounts=torch.from_numpy(scaled.astype(np.float32)),
        present=torch.from_numpy(present),
        is_product=torch.from_numpy(is_product & present),
        conditions=torch.from_numpy(conditions.astype(np.float32)),
        size_nm=torch.from_numpy(table["Y1"].to_numpy(np.float32)),
        shape=torch.from_numpy(table["Y3"].to_numpy(np.int64).copy()),
        weak=torch.from_numpy(np.asarray(weak, dtype=bool)),
    )
