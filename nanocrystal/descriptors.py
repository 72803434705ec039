"""Uni-Mol descriptors: restricted loading of the upstream .pkl, lookup, intermediates and coverage."""
from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .recipes import EMPTY_NAME, NAME_COLUMNS, PRODUCT_NAME

INTERMEDIATE_SEPARATOR = "@"

# What a pickled dict of numpy arrays needs, and nothing that could run code.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class DescriptorError(ValueError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DescriptorError(f"refusing to load {module}.{name}: only a dict of str -> numpy array is accepted")
        return super().find_class(module, name)


def load_descriptor_file(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise DescriptorError(f"{path}: no such file (run `python -m nanocrystal fetch`)")
    with open(path, "rb") as handle:
        try:
            table = _RestrictedUnpickler(handle).load()
        except DescriptorError as error:
            raise DescriptorError(f"{path}: {error}") from None
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise DescriptorError(f"{path}: not a descriptor pickle ({error})") from None
    if not isinstance(table, dict):
        raise DescriptorError(f"{path}: expected a dict of name -> array, got {type(table).__name__}")
    dims = set()
    for name, vector in table.items():
        if not isinstance(name, str) or not isinstance(vector, np.ndarray) or vector.ndim != 1:
            raise DescriptorError(f"{path}: entry {name!r} is not a str -> 1-d numpy array")
        dims.add(vector.shape[0])
    if len(dims) > 1:
        raise DescriptorError(f"{path}: descriptors have different lengths {sorted(dims)}")
    return {name: vector.astype(np.float32) for name, vector in table.items()}


@dataclass(frozen=True)
class DescriptorStore:
    vectors: dict[str, np.ndarray]

    @property
    def dim(self) -> int:
        return len(next(iter(self.vectors.values())))

    def __contains__(self, name: str) -> bool:
        return name == EMPTY_NAME or name in self.vectors

    def get(self, name: str) -> np.ndarray:
        if name == EMPTY_NAME:
            return np.zeros(self.dim, dtype=np.float32)
        try:
            return self.vectors[name]
        except KeyError:
            raise DescriptorError(f"no descriptor for substance {name!r}") from None

    def intermediates(self) -> list[str]:
        return sorted(n for n in self.vectors if INTERMEDIATE_SEPARATOR in n)

    def coverage(self, table: pd.DataFrame) -> dict[str, Counter]:
        """Names without a descriptor, counted by rows, for reagents and products separately."""
        reagents = Counter(n for n in table[list(NAME_COLUMNS)].to_numpy().ravel() if n not in self)
        products = Counter(n for n in table[PRODUCT_NAME] if n not in self)
        return {"reagents": reagents, "products": products}


def load_descriptors(path: str | Path) -> DescriptorStore:
    return DescriptorStore(load_descriptor_file(path))


def intermediate_name(first: str, second: str) -> str:
    return f"{first}{INTERMEDIATE_SEPARATOR}{second}"
