"""A fixed-length recipe vector for classic models (trees, gradient boosting), fitted sklearn-style on training rows.

Columns: conditions, per-slot log amounts (slots A..J; K..M are always empty), per-slot descriptors reduced by a PCA,
an amount-weighted mean descriptor (own PCA), the product descriptor (own PCA), the log amount of each of the most
frequent training substances (a slot-order-free view: OA may sit in slot C of one recipe and F of the next), the number
of substances and the total amount. Every PCA and the substance list see the training rows only; unknown names become
zero vectors and are counted in `missing_`.
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Optional

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from threadpoolctl import threadpool_limits

from .descriptors import DescriptorStore
from .recipes import AMOUNT_COLUMNS, CONDITION_COLUMNS, EMPTY_NAME, NAME_COLUMNS, PRODUCT_NAME, SLOTS

USED_SLOTS = SLOTS[:10]  # A..J: K..M are empty in every upstream file
USED_AMOUNTS = list(AMOUNT_COLUMNS[:len(USED_SLOTS)])
USED_NAMES = list(NAME_COLUMNS[:len(USED_SLOTS)])
PCA_STATE = ("mean_", "components_", "explained_variance_")


def name_descriptors(store: DescriptorStore, names: np.ndarray) -> np.ndarray:
    """One descriptor row per name; zeros for PlaceHolder and for names without a descriptor (upstream does the same;
    `RecipeFeaturizer.missing_` counts them)."""
    zeros = np.zeros(store.dim, np.float32)
    return np.stack([store.get(name) if name in store else zeros for name in names]).astype(np.float64)


def _pca(n_components: int, samples: np.ndarray, seed: int) -> PCA:
    # Never more components than the training rows support; the column count stays n_components (zero padded).
    n = max(1, min(n_components, samples.shape[0], samples.shape[1]))
    # exact and fast for 512 columns; one BLAS thread: on shared cores threads fighting over a 512x512 eigh took 12 s
    with threadpool_limits(limits=1, user_api="blas"):
        return PCA(n_components=n, svd_solver="covariance_eigh", random_state=seed).fit(samples)


def _project(pca: PCA, vectors: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((vectors.shape[0], width))
    out[:, :pca.n_components_] = pca.transform(vectors)
    return out


def _pca_state(pca: PCA) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.asarray(getattr(pca, name))) for name in PCA_STATE}


def _pca_from_state(state: dict[str, torch.Tensor]) -> PCA:
    """A fitted PCA rebuilt from its arrays (what `transform` reads), without pickling sklearn objects."""
    pca = PCA(n_components=state["components_"].shape[0])
    for name in PCA_STATE:
        setattr(pca, name, state[name].numpy())
    pca.n_components_, pca.n_features_in_ = pca.components_.shape
    return pca


class RecipeFeaturizer:
    """fit(train_table) learns the PCAs from training rows only; transform(table) returns a float matrix whose
    columns are named in `feature_names_`."""

    def __init__(self, store: DescriptorStore, n_components: int = 8, n_substances: int = 0, use_product: bool = True,
                 size_as_input: bool = False, seed: int = 0):
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.store = store
        self.n_components = n_components
        self.n_substances = n_substances
        self.use_product = use_product
        self.size_as_input = size_as_input
        self.seed = seed
        self.missing_: dict[str, Counter] = {}  # names without a descriptor in the last transform, by role
        self.slot_pca_: Optional[PCA] = None

    # ---- pieces shared by fit and transform -------------------------------------------------------------------

    def _vocabulary(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The distinct slot names of `table` and each slot's index into them."""
        names = table[USED_NAMES].to_numpy(dtype=object)
        codes, vocabulary = pd.factorize(names.ravel())
        return np.asarray(vocabulary, dtype=object), codes.reshape(names.shape)

    def _weighted_mean(self, table: pd.DataFrame) -> np.ndarray:
        """Amount-weighted mean of the 512-d slot descriptors (mole fractions as weights), one row per recipe."""
        vocabulary, codes = self._vocabulary(table)
        vectors = name_descriptors(self.store, vocabulary)
        amounts = table[USED_AMOUNTS].to_numpy(dtype=np.float64)
        total = amounts.sum(axis=1, keepdims=True)
        fractions = np.divide(amounts, total, out=np.zeros_like(amounts), where=total > 0)
        rows = np.repeat(np.arange(len(table)), len(USED_NAMES))
        weights = sparse.csr_matrix((fractions.ravel(), (rows, codes.ravel())), shape=(len(table), len(vocabulary)))
        return np.asarray(weights @ vectors)

    def _products(self, table: pd.DataFrame) -> np.ndarray:
        codes, vocabulary = pd.factorize(table[PRODUCT_NAME])
        return name_descriptors(self.store, vocabulary)[codes]

    # ---- sklearn-style API ------------------------------------------------------------------------------------

    def fit(self, train: pd.DataFrame) -> "RecipeFeaturizer":
        if len(train) == 0:
            raise ValueError("cannot fit the featurizer on zero training rows")
        vocabulary, _ = self._vocabulary(train)
        reagents = vocabulary[vocabulary != EMPTY_NAME]  # each distinct substance of the training rows once
        counts = pd.Series(train[USED_NAMES].to_numpy(dtype=object).ravel()).value_counts()
        self.substances_ = [n for n in counts.index if n != EMPTY_NAME][:self.n_substances]
        self.slot_pca_ = _pca(self.n_components, name_descriptors(self.store, reagents), self.seed)
        self.mean_pca_ = _pca(self.n_components, self._weighted_mean(train), self.seed)
        if self.use_product:
            products = train[PRODUCT_NAME].unique()
            products = products[products != EMPTY_NAME]
            self.product_pca_ = _pca(self.n_components, name_descriptors(self.store, products), self.seed)
        self.feature_names_ = self._names()
        return self

    def _names(self) -> list[str]:
        k = range(self.n_components)
        names = [*CONDITION_COLUMNS, "log_time"]
        names += ["size_input"] if self.size_as_input else []
        names += [f"log_amount_{s}" for s in USED_SLOTS]
        names += [f"desc_{s}_{i}" for s in USED_SLOTS for i in k]
        names += [f"mean_desc_{i}" for i in k]
        names += [f"product_desc_{i}" for i in k] if self.use_product else []
        names += [f"log_amount[{n}]" for n in self.substances_]
        return names + ["n_substances", "log_total_amount"]

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        if self.slot_pca_ is None:
            raise NotFittedError("RecipeFeaturizer.transform called before fit")
        self.missing_ = self.store.coverage(table)
        conditions = table[list(CONDITION_COLUMNS)].to_numpy(dtype=np.float64)
        parts = [conditions, np.log1p(conditions[:, [3]])]
        if self.size_as_input:
            size = table["Y1"].to_numpy(dtype=np.float64)
            parts.append(np.where(size > 0, size, np.nan)[:, None])  # unknown size: missing, trees handle NaN
        amounts = table[USED_AMOUNTS].to_numpy(dtype=np.float64)
        parts.append(np.log1p(amounts))
        vocabulary, codes = self._vocabulary(table)
        projected = _project(self.slot_pca_, name_descriptors(self.store, vocabulary), self.n_components)
        projected[vocabulary == EMPTY_NAME] = 0.0  # an empty slot carries no descriptor
        parts.append(projected[codes].reshape(len(table), -1))
        parts.append(_project(self.mean_pca_, self._weighted_mean(table), self.n_components))
        if self.use_product:
            parts.append(_project(self.product_pca_, self._products(table), self.n_components))
        names = table[USED_NAMES].to_numpy(dtype=object)
        parts += [np.log1p(np.where(names == n, amounts, 0.0).sum(axis=1, keepdims=True)) for n in self.substances_]
        parts.append((amounts > 0).sum(axis=1, keepdims=True))
        parts.append(np.log1p(amounts.sum(axis=1, keepdims=True)))
        return np.hstack(parts)

    def with_substances(self, vectors: dict[str, np.ndarray]) -> "RecipeFeaturizer":
        """A copy that also describes `vectors`' substances (predict's new substances); the fitted PCAs are kept."""
        features = copy.copy(self)
        features.store = DescriptorStore({**self.store.vectors, **vectors})
        return features

    # ---- checkpoint state: tensors, strings and numbers only (torch.load(weights_only=True) reads it) -----------

    def to_state(self) -> dict:
        if self.slot_pca_ is None:
            raise NotFittedError("RecipeFeaturizer.to_state called before fit")
        pcas = {"slot": self.slot_pca_, "mean": self.mean_pca_, **({"product": self.product_pca_}
                                                                  if self.use_product else {})}
        return {"n_components": self.n_components, "n_substances": self.n_substances, "use_product": self.use_product,
                "size_as_input": self.size_as_input, "seed": self.seed, "substances": list(self.substances_),
                "pca": {name: _pca_state(pca) for name, pca in pcas.items()}}

    @classmethod
    def from_state(cls, state: dict, store: DescriptorStore) -> "RecipeFeaturizer":
        features = cls(store, state["n_components"], state["n_substances"], state["use_product"],
                       state["size_as_input"], state["seed"])
        features.substances_ = list(state["substances"])
        pcas = {name: _pca_from_state(values) for name, values in state["pca"].items()}
        features.slot_pca_, features.mean_pca_ = pcas["slot"], pcas["mean"]
        if features.use_product:
            features.product_pca_ = pcas["product"]
        features.feature_names_ = features._names()
        return features
