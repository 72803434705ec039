"""Uni-Mol descriptors: restricted loading of the upstream .pkl, lookup, intermediates and coverage."""
from __future__ import annotations

import io
import math
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .recipes import EMPTY_NAME, NAME_COLUMNS, PRODUCT_NAME

INTERMEDIATE_SEPARATOR = "@"
MAX_DIM = 1 << 16  # values per descriptor (the upstream file has 512); more is not a descriptor file


class DescriptorError(InputError, ValueError):
    pass


# numpy pickles an array as _reconstruct(ndarray, (0,), b"b") followed by BUILD with (version, shape, dtype, fortran
# order, bytes), and its dtype as dtype("f4", False, True) followed by BUILD with (version, byte order, ...). The
# unpickler hands those calls to stand-ins that only record the arguments; the arrays are then made from checked
# bytes by np.frombuffer. numpy's own __setstate__ never sees the file: a crafted state crashes the interpreter in it
# (a fuzzed file did), beyond any exception handling.
_NUMBER_TYPES = {"b1", "f2", "f4", "f8", *(f"{kind}{size}" for kind in "iu" for size in (1, 2, 4, 8))}


class _PickledDtype:
    def __init__(self, code, align=False, copy=True):
        if not (isinstance(code, str) and code in _NUMBER_TYPES):
            raise DescriptorError(f"array type {str(code)[:20]!r} is not a number type")
        self.code, self.order = code, "|"

    def __setstate__(self, state) -> None:
        if not (isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "=")):
            raise DescriptorError("damaged array type")
        self.order = state[1]

    def numpy(self) -> np.dtype:
        return np.dtype(self.order + self.code)


class _PickledArray:
    state = None

    def __setstate__(self, state) -> None:
        self.state = state

    def numpy(self) -> np.ndarray:
        if not (isinstance(self.state, tuple) and len(self.state) == 5):
            raise DescriptorError("damaged array")
        _, shape, dtype, fortran, data = self.state
        if not (isinstance(shape, tuple) and len(shape) <= 32 and all(type(n) is int and n >= 0 for n in shape)
                and isinstance(dtype, _PickledDtype) and isinstance(data, bytes)):
            raise DescriptorError("damaged array")
        dtype = dtype.numpy()
        if math.prod(shape) * dtype.itemsize != len(data):
            raise DescriptorError("array data do not fill its shape")
        return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _reconstruct(subtype, shape, typecode) -> _PickledArray:
    if subtype is not _PickledArray:
        raise DescriptorError("damaged array")
    return _PickledArray()


# What a pickled dict of numpy arrays needs, and nothing that could run code.
_STAND_INS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _PickledArray,
    ("numpy", "dtype"): _PickledDtype,
}


class _RestrictedUnpickler(pickle._Unpickler):
    """The Python implementation of the unpickler: its memo is a dict, so a damaged memo index cannot make it allocate
    gigabytes (the C one sizes an array by the largest index). The upstream file, mostly long byte strings, still
    loads in well under a second."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _STAND_INS:
            raise DescriptorError(f"refusing to load {f'{module}.{name}'[:80]!r}: only a dict of str -> numpy array "
                                  "is accepted")
        return _STAND_INS[module, name]


def load_descriptor_file(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise DescriptorError(f"{path}: no such file (run `python -m nanocrystal fetch`)")
    return descriptor_table(path.read_bytes(), str(path))


def descriptor_table(data: bytes, source: str) -> dict[str, np.ndarray]:
    """The name -> float32 vector table of an upstream .pkl's bytes (read from memory: a damaged length field cannot
    make the reader allocate gigabytes). Every way they can be bad or hostile (code to run, damage, absurd sizes,
    wrong contents) is a DescriptorError naming `source`."""
    refetch = "re-fetch it: python -m nanocrystal fetch"
    try:
        table = _RestrictedUnpickler(io.BytesIO(data)).load()
        if isinstance(table, dict):
            table = {name: v.numpy() if isinstance(v, _PickledArray) else v for name, v in table.items()}
    except DescriptorError as error:
        raise DescriptorError(f"{source}: {error}") from None
    except Exception as error:  # damaged pickle data fails in many ways: truncation, bad opcodes, bad arguments
        raise DescriptorError(f"{source}: not a descriptor pickle ({type(error).__name__}); {refetch}") from None
    if not isinstance(table, dict):
        raise DescriptorError(f"{source}: expected a dict of name -> array, got {type(table).__name__}")
    if not table:
        raise DescriptorError(f"{source}: holds no descriptors; {refetch}")
    dims = set()
    for name, vector in table.items():
        if not (isinstance(name, str) and isinstance(vector, np.ndarray) and vector.ndim == 1):
            raise DescriptorError(f"{source}: entry {repr(name)[:60]} is not a str -> 1-d numpy array of numbers")
        dims.add(vector.shape[0])
    if len(dims) > 1:
        raise DescriptorError(f"{source}: descriptors have different lengths {sorted(dims)[:5]}")
    if not 0 < dims.pop() <= MAX_DIM:
        raise DescriptorError(f"{source}: descriptors must have 1 to {MAX_DIM:,} values")
    with np.errstate(over="ignore"):  # an overflow is reported just below
        vectors = {name: vector.astype(np.float32) for name, vector in table.items()}
    for name, vector in vectors.items():
        if not np.isfinite(vector).all():
            raise DescriptorError(f"{source}: entry {repr(name)[:60]} holds values that are not finite in float32")
    return vectors


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
