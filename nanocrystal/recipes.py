"""The recipe schema: columns, slots, validation, loading, and the pools of docs/protocol.md section 2.

A recipe table in memory is a pandas DataFrame with the upstream column names (users grep for them) in a fixed order
and fixed dtypes, plus a boolean `failed` column. Row numbers in messages are line numbers of the file (header = 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .errors import InputError

SLOTS = tuple("ABCDEFGHIJKLM")
AMOUNT_COLUMNS = tuple(f"{slot}1" for slot in SLOTS)
NAME_COLUMNS = tuple(f"{slot}2" for slot in SLOTS)
CONDITION_COLUMNS = ("Temperature1", "Temperature2", "Speed", "Time")
TEMPERATURE_COLUMNS = ("Temperature1", "Temperature2")
LABEL_COLUMNS = ("Num", "Y1", "Y2", "Y3")
PRODUCT_AMOUNT, PRODUCT_NAME = "T1", "T2"
REQUIRED_COLUMNS = ("ID", *CONDITION_COLUMNS, *LABEL_COLUMNS, PRODUCT_AMOUNT, PRODUCT_NAME,
                    *AMOUNT_COLUMNS, *NAME_COLUMNS)
NUMERIC_COLUMNS = ("ID", *CONDITION_COLUMNS, *LABEL_COLUMNS, PRODUCT_AMOUNT, *AMOUNT_COLUMNS)
OPTIONAL_COLUMNS = ("source_ID", "augmented")  # written by augment.py
EMPTY_NAME = "PlaceHolder"

SOLID_MIN_COUNT = 300  # Num >= 300 particles counted on TEM: a solid size label
MAX_EVAL_SIZE_NM = 20.0
UNKNOWN = -1  # Num / Y1 / Y2 of unknown or failed rows
ABSOLUTE_ZERO_C = -273.15
# Solution syntheses of the data run at -50..385 °C; above 1000 °C no solvent or salt melt is liquid for long, so a
# larger value is a typo or a unit slip.
MAX_TEMPERATURE_C = 1000.0
# The models compute in float32: a larger magnitude becomes inf there (and NaN further on).
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_WHOLE = 2.0 ** 53  # ID and Num are whole numbers; beyond 2^53 a float64 no longer holds every one

RECIPES_FILE = "0309_classification_and_reg-raw-v3.csv"
FAILURES_FILE = "0404_failure.csv"
SHAPES_FILE = "shapes_list.txt"


class RecipeError(InputError, ValueError):
    """Every problem found in a file, one `file:row:column: message` per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def load_shapes(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError([f"{path}:-:-: no such file (the shapes list: one shape name per line)"])
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise RecipeError([f"{path}:-:-: not a text file (the shapes list: one shape name per line)"])
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise RecipeError([f"{path}:1:-: empty shapes list"])
    return names


def validate_frame(raw: pd.DataFrame, source: str, n_shapes: int) -> tuple[pd.DataFrame, list[str]]:
    """Check a table read as strings; return the typed table and every problem found. The index of `raw` is the file
    line minus 2 (the header is line 1; see read_csv_raw)."""
    problems: list[str] = []
    lines = raw.index.to_numpy() + 2
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    extra = [c for c in raw.columns if c not in REQUIRED_COLUMNS and c not in OPTIONAL_COLUMNS]
    problems += [f"{source}:1:{c}: missing required column" for c in missing]
    problems += [f"{source}:1:{c}: unexpected column" for c in extra]

    # A missing column reads as empty (NaN / no name), so every other column is still checked and reported.
    typed = pd.DataFrame(index=raw.index)
    for column in NUMERIC_COLUMNS:
        if column not in raw.columns:
            typed[column] = np.nan
            continue
        text = raw[column].astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce").astype(float)
        usable = np.isfinite(values) & (values.abs() <= FLOAT32_MAX)  # finite where the models compute
        for index in np.flatnonzero(~usable.to_numpy()):
            cell = text.iloc[index]
            what = ("missing value (NaN)" if cell.lower() in ("", "nan", "none", "null") else
                    f"non-numeric value {cell!r}" if np.isnan(values.iloc[index]) else
                    f"non-finite value {cell!r}" if cell.lower().lstrip("+-") in ("inf", "infinity") else
                    f"value {cell} is too large (beyond ±{FLOAT32_MAX:.3g}, the float32 range of the models)")
            problems.append(f"{source}:{lines[index]}:{column}: {what}")
        typed[column] = values.where(usable)  # reported above, never checked or used
    for column in (PRODUCT_NAME, *NAME_COLUMNS):
        typed[column] = raw[column].fillna("").astype(str).str.strip() if column in raw.columns else ""
    for column in OPTIONAL_COLUMNS:
        if column in raw.columns:
            typed[column] = raw[column]

    def flag(mask: pd.Series, column: str, message) -> None:
        for index in np.flatnonzero(mask.fillna(False).to_numpy()):
            text = message(typed[column].iloc[index]) if callable(message) else message
            problems.append(f"{source}:{lines[index]}:{column}: {text}")

    for column in (*AMOUNT_COLUMNS, PRODUCT_AMOUNT):
        flag(typed[column] < 0, column, lambda v: f"negative amount {v:g}")
    for column in TEMPERATURE_COLUMNS:
        flag(typed[column] < ABSOLUTE_ZERO_C, column, lambda v: f"temperature {v:g} °C is below absolute zero")
        flag(typed[column] > MAX_TEMPERATURE_C, column,
             lambda v: f"temperature {v:g} °C is above {MAX_TEMPERATURE_C:g} °C (the ceiling for a synthesis)")
    flag(typed["Time"] < 0, "Time", lambda v: f"negative time {v:g}")
    flag(typed["Speed"] < 0, "Speed", lambda v: f"negative heating rate {v:g}")
    shape = typed["Y3"]
    # -1 = unknown: a recipe to predict (nanocrystal.convert with labels=False)
    flag(shape.notna() & ((shape != shape.round()) | (shape < UNKNOWN) | (shape > n_shapes)), "Y3",
         lambda v: f"shape index {v:g} is not in the shapes list (0..{n_shapes - 1}, {n_shapes} = failed, "
                   f"{UNKNOWN} = unknown)")
    size = typed["Y1"]
    flag((size <= 0) & (size != UNKNOWN), "Y1", lambda v: f"size {v:g} must be positive or {UNKNOWN} (unknown)")
    flag((typed["Y2"] < 0) & (typed["Y2"] != UNKNOWN), "Y2",
         lambda v: f"size distribution {v:g} must be >= 0 or {UNKNOWN} (unknown)")
    flag((typed["Num"] < 0) & (typed["Num"] != UNKNOWN), "Num",
         lambda v: f"particle count {v:g} must be >= 0 or {UNKNOWN} (unknown)")
    for column in ("ID", "Num"):  # integers in the model layout
        flag(typed[column].notna() & (typed[column] != typed[column].round()), column,
             lambda v: f"{v:g} is not a whole number")
        flag(typed[column].abs() > MAX_WHOLE, column, lambda v: f"{v:g} is too large for a whole number (above 2^53)")
    flag(typed["ID"].notna() & typed["ID"].duplicated(keep="first"), "ID", lambda v: f"duplicate ID {v:g}")
    for amount_col, name_col in zip(AMOUNT_COLUMNS, NAME_COLUMNS):
        empty = typed[name_col].isin(["", EMPTY_NAME])
        flag(empty & (typed[amount_col] > 0), amount_col, f"amount > 0 but {name_col} names no substance")
        flag(~empty & (typed[amount_col] == 0), name_col, lambda v: f"substance {v!r} has amount 0")
    return typed, problems


def read_csv_raw(path: str | Path) -> pd.DataFrame:
    """A CSV as strings, blank lines dropped; the index is the file line minus 2, for messages."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError([f"{path}:-:-: no such file"])
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if b"\0" in head:
        raise RecipeError([f"{path}:-:-: a binary file, not a CSV"])
    header = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    for separator, name in ((";", "semicolon"), ("\t", "tab")):
        if "," not in header and separator in header:  # else pandas reads one column and every column is missing
            raise RecipeError([f"{path}:1:-: the columns are {name}-separated; save the file as a comma-separated "
                               "CSV (with decimal points)"])
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError as error:
        raise RecipeError([f"{path}:-:-: empty file"]) from error
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise RecipeError([f"{path}:-:-: not a readable CSV ({error})"]) from error
    if not isinstance(raw.index, pd.RangeIndex):  # pandas took the first column as the index
        raise RecipeError([f"{path}:2:-: every row has one field more than the header (a trailing comma?)"])
    rows = raw[(raw != "").any(axis=1)]
    if rows.empty:
        raise RecipeError([f"{path}:-:-: no rows below the header"])
    return rows


def read_table(path: str | Path, n_shapes: int,
               prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> pd.DataFrame:
    """Read and validate one recipe CSV (model layout; columns in any order). Raises RecipeError listing every problem.
    `prepare` may complete the raw string table first (recipes to predict: nanocrystal.predict.prepare_raw)."""
    return read_frame(read_csv_raw(path), str(path), n_shapes, prepare)


def read_frame(raw: pd.DataFrame, source: str, n_shapes: int,
               prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> pd.DataFrame:
    typed, problems = validate_frame(raw if prepare is None else prepare(raw), source, n_shapes)
    if problems:
        raise RecipeError(problems)
    return finish(typed, n_shapes)


def finish(typed: pd.DataFrame, n_shapes: int) -> pd.DataFrame:
    """Canonical column order and dtypes; empty names become PlaceHolder; `failed` from the shape index."""
    frame = typed.copy()
    for column in NAME_COLUMNS:
        frame[column] = frame[column].replace("", EMPTY_NAME)
    for column in ("ID", "Num", "Y3"):
        frame[column] = frame[column].astype(np.int64)
    frame["failed"] = frame["Y3"] == n_shapes
    extra = [c for c in OPTIONAL_COLUMNS if c in frame.columns]
    return frame[[*REQUIRED_COLUMNS, *extra, "failed"]].reset_index(drop=True)


@dataclass(frozen=True)
class Dataset:
    recipes: pd.DataFrame  # the 3,489 recipes with products
    failures: pd.DataFrame  # the 5,245 failed syntheses
    shapes: list[str]  # shape index -> name; index len(shapes) means failed

    @property
    def n_shapes(self) -> int:
        return len(self.shapes)


def load_dataset(data_dir: str | Path) -> Dataset:
    data_dir = Path(data_dir)
    shapes_path = data_dir / SHAPES_FILE
    if not shapes_path.is_file():
        raise RecipeError([f"{shapes_path}:-:-: no such file (run `python -m nanocrystal fetch`)"])
    shapes = load_shapes(shapes_path)
    recipes = read_table(data_dir / RECIPES_FILE, len(shapes))
    failures = read_table(data_dir / FAILURES_FILE, len(shapes))
    return Dataset(recipes=recipes, failures=failures, shapes=shapes)


# ---- pools (docs/protocol.md section 2) ------------------------------------------------------------------------

def is_solid(table: pd.DataFrame) -> pd.Series:
    return table["Num"] >= SOLID_MIN_COUNT


def has_size(table: pd.DataFrame) -> pd.Series:
    return (table["Y1"] > 0) & (table["Y1"] <= MAX_EVAL_SIZE_NM)


def evaluation_mask(table: pd.DataFrame) -> pd.Series:
    """Solid rows with a size of at most 20 nm: the 617 rows the paper scores."""
    return is_solid(table) & has_size(table) & ~table["failed"]


def pool_counts(table: pd.DataFrame) -> dict[str, int]:
    solid = is_solid(table) & ~table["failed"]
    return {
        "rows": len(table),
        "solid": int(solid.sum()),
        "weak": int((~solid & ~table["failed"]).sum()),
        "evaluation": int(evaluation_mask(table).sum()),
        "large": int((solid & (table["Y1"] > MAX_EVAL_SIZE_NM)).sum()),
        "failed": int(table["failed"].sum()),
    }


def substance_names(table: pd.DataFrame) -> np.ndarray:
    return table[list(NAME_COLUMNS)].to_numpy(dtype=object)


def substance_amounts(table: pd.DataFrame) -> np.ndarray:
    return table[list(AMOUNT_COLUMNS)].to_numpy(dtype=np.float64)


def series_keys(table: pd.DataFrame) -> pd.Series:
    """Recipe series: same product, same reagent names and amounts (differs only in temperature/time/heating rate).
    `product|name=amount|...` over the 13 slots, amounts rounded to 6 decimals as str(float) writes them: the series
    correction saves these keys in checkpoints. Plain Python per row: pandas' string columns took 28 ms for one row."""
    names = table[list(NAME_COLUMNS)].to_numpy(dtype=object)
    amounts = table[list(AMOUNT_COLUMNS)].to_numpy(dtype=np.float64).round(6)
    keys = ["|".join([str(product), *(f"{name}={float(amount)}" for name, amount in zip(row_names, row_amounts))])
            for product, row_names, row_amounts in zip(table[PRODUCT_NAME].to_numpy(object), names, amounts)]
    return pd.Series(keys, index=table.index)
