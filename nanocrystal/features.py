"""A fixed-length recipe vector for classic models (trees, gradient boosting), fitted sklearn-style on training rows.

Columns: conditions, per-slot log amounts (slots A..J; K..M are always empty), per-slot descriptors reduced by a PCA,
an amount-weighted mean descriptor (own PCA), the product descriptor (own PCA), the log amount of each of the most
frequent training substances (a slot-order-free view: OA may sit in slot C of one recipe and F of the next), the number
of substances and the total amount; with `chemistry` (--chemistry_features), the chemistry columns of
`chemistry_columns`. Every PCA and the substance list see the training rows only; unknown names become zero vectors
and are counted in `missing_`.
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
from .substances import ELEMENT_PROPERTIES, MAX_Z, composition_vector, electronegativity, formula_atoms

USED_SLOTS = SLOTS[:10]  # A..J: K..M are empty in every upstream file
USED_AMOUNTS = list(AMOUNT_COLUMNS[:len(USED_SLOTS)])
USED_NAMES = list(NAME_COLUMNS[:len(USED_SLOTS)])
PCA_STATE = ("mean_", "components_", "explained_variance_")
CHEMISTRY_BLOCKS = {  # block -> its columns in chemistry_columns, in order
    "product": ["product_n_elements"] + [f"product_{stat}_{name}" for stat in ("mean", "std", "min", "max")
                                         for name, _ in ELEMENT_PROPERTIES],
    "roles": ["log_organic_mmol", "log_precursor_mmol", "log_organic_per_precursor", "log_largest_share",
              "n_organic", "n_precursor"],
    "elements": ["log_cation_mmol", "log_anion_mmol", "log_cation_anion_excess"],
}
CHEMISTRY_NAMES = [name for block in CHEMISTRY_BLOCKS.values() for name in block]


def chemistry_columns(table: pd.DataFrame, chemistry: dict[str, tuple[str, str]]) -> np.ndarray:
    """(rows, len(CHEMISTRY_NAMES)) from each substance's (formula, kind) in `chemistry` (substances.csv):
    - the product's composition: its number of elements and the fraction-weighted mean, standard deviation, minimum
      and maximum of the element properties (substances.composition_vector);
    - amounts by role: mmol of organics (solvents, ligands) and of the other substances (precursors), their ratio,
      the largest amount's share of the total (the solvent's), each role's count;
    - the recipe's mmol of the product's least (cation) and most electronegative (anion) element over all its
      substances (amount x atoms per formula unit), and their ratio over the product's own ratio (0: the
      product's stoichiometry; NaN for a one-element product).
    NaN where the product has no formula; a substance `chemistry` lacks counts as a precursor with no atoms."""
    names = table[USED_NAMES].to_numpy(dtype=object)
    amounts = table[USED_AMOUNTS].to_numpy(dtype=np.float64)
    formula = {name: entry[0] for name, entry in chemistry.items()}

    def product_row(product: str) -> np.ndarray:
        own = formula_atoms(formula.get(product, ""))
        if not own:
            return np.full(2 + 4 * len(ELEMENT_PROPERTIES), np.nan)
        ordered = sorted(own, key=electronegativity)
        return np.concatenate([[len(own)], composition_vector(formula[product])[MAX_Z:],
                               [np.nan if len(own) < 2 else np.log(own[ordered[0]] / own[ordered[-1]])]])

    products = {product: product_row(product) for product in table[PRODUCT_NAME].unique()}
    product = np.stack([products[p] for p in table[PRODUCT_NAME]])
    present = (names != EMPTY_NAME) & (amounts > 0)
    organic = np.vectorize(lambda n: chemistry.get(n, ("", ""))[1] == "organic", otypes=[bool])(names) & present
    organic_mmol = np.where(organic, amounts, 0.0).sum(axis=1)
    precursor_mmol = np.where(present & ~organic, amounts, 0.0).sum(axis=1)
    total = amounts.sum(axis=1)
    largest_share = np.divide(amounts.max(axis=1), total, out=np.full(len(table), np.nan), where=total > 0)
    elements = np.full((len(table), 2), np.nan)
    for row, (product_name, row_names, row_amounts) in enumerate(zip(table[PRODUCT_NAME], names, amounts)):
        own = sorted(formula_atoms(formula.get(product_name, "")), key=electronegativity)
        for column, element in enumerate([own[0], own[-1]][:len(own)] if len(own) > 1 else own):
            elements[row, column] = sum(amount * formula_atoms(formula.get(name, "")).get(element, 0.0)
                                        for name, amount in zip(row_names, row_amounts) if amount > 0)
    ratio = np.log((elements[:, 0] + 1e-4) / (elements[:, 1] + 1e-4)) - product[:, -1]
    return np.column_stack([product[:, :-1], np.log1p(organic_mmol), np.log1p(precursor_mmol),
                            np.log((organic_mmol + 1e-3) / (precursor_mmol + 1e-3)), np.log(largest_share),
                            organic.sum(axis=1), (present & ~organic).sum(axis=1), np.log1p(elements), ratio])


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
                 size_as_input: bool = False, seed: int = 0, chemistry: dict[str, tuple[str, str]] | None = None):
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.store = store
        self.n_components = n_components
        self.n_substances = n_substances
        self.use_product = use_product
        self.size_as_input = size_as_input
        self.seed = seed
        self.chemistry = chemistry  # name -> (formula, kind): the chemistry columns; None: none
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
        return names + ["n_substances", "log_total_amount"] + (CHEMISTRY_NAMES if self.chemistry is not None else [])

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
        if self.chemistry is not None:
            parts.append(chemistry_columns(table, self.chemistry))
        return np.hstack(parts)

    def with_substances(self, vectors: dict[str, np.ndarray],
                        chemistry: dict[str, tuple[str, str]] | None = None) -> "RecipeFeaturizer":
        """A copy that also describes `vectors`' substances (predict's new substances), and `chemistry`'s in the
        chemistry columns; the fitted PCAs are kept."""
        features = copy.copy(self)
        features.store = DescriptorStore({**self.store.vectors, **vectors})
        if self.chemistry is not None and chemistry:
            features.chemistry = {**self.chemistry, **chemistry}
        return features

    # ---- checkpoint state: tensors, strings and numbers only (torch.load(weights_only=True) reads it) -----------

    def to_state(self) -> dict:
        if self.slot_pca_ is None:
            raise NotFittedError("RecipeFeaturizer.to_state called before fit")
        pcas = {"slot": self.slot_pca_, "mean": self.mean_pca_, **({"product": self.product_pca_}
                                                                  if self.use_product else {})}
        return {"n_components": self.n_components, "n_substances": self.n_substances, "use_product": self.use_product,
                "size_as_input": self.size_as_input, "seed": self.seed, "substances": list(self.substances_),
                **({} if self.chemistry is None else {"chemistry": {n: list(e) for n, e in self.chemistry.items()}}),
                "pca": {name: _pca_state(pca) for name, pca in pcas.items()}}

    @classmethod
    def from_state(cls, state: dict, store: DescriptorStore) -> "RecipeFeaturizer":
        chemistry = state.get("chemistry")  # absent: none (and in checkpoints written before the option)
        features = cls(store, state["n_components"], state["n_substances"], state["use_product"],
                       state["size_as_input"], state["seed"],
                       None if chemistry is None else {n: (e[0], e[1]) for n, e in chemistry.items()})
        features.substances_ = list(state["substances"])
        pcas = {name: _pca_from_state(values) for name, values in state["pca"].items()}
        features.slot_pca_, features.mean_pca_ = pcas["slot"], pcas["mean"]
        if features.use_product:
            features.product_pca_ = pcas["product"]
        features.feature_names_ = features._names()
        return features
