"""Convert the human-readable recipe sheet (the layout of upstream's `Raw recipe dataset.xlsx`) into the model CSV.

Columns are found by header name (order does not matter): `Nanocrystal Composition`, `injection temperature/℃`,
`reaction temperature/℃`, `reaction time/min`, `heating rate/℃ min-1`, ten pairs `additive amount/mmol[.k]` +
`reactants[.k]` (k = 1..9; pair k fills model slot A..J, K..M stay empty), and the labels `D/nm`,
`Size distribution/%`, `shape` (a name from data/shapes_list.txt, any case) and `Number of statistics`. Other columns
(precursors, DOI, segmentation flag) are not used. The product amount T1 is 1, as upstream.

Nothing is guessed. A cell is *unknown* when it is empty or not a finite number (`?`, full-width `？`, `*`, `bs`,
`hx1`, `ia1`, ...). The rules:

- kept, field marked unknown: `Number of statistics` -> Num = -1 (a weak row); `Size distribution/%` -> Y2 = -1;
  heating rate -> Speed = UNKNOWN_SPEED (13.90111345, the value upstream's CSV holds for every heating rate the sheet
  gives as `?`; the models are trained on that code, so converted recipes must carry the same one).
- row dropped: a missing product; an unknown temperature or time; an unknown or non-positive size `D/nm`; a shape name
  not in the shapes list; an amount that is not a number, not positive, or has no reagent name; a reagent name without
  an amount; a temperature below -273.15 °C, a negative time, heating rate or size distribution; a Number of
  statistics that is a number but not a whole number >= 0.

Rows that are entirely empty are not recipes and are skipped. ID = the sheet row number (header row = 1), so every
converted row and every drop points back at the sheet. The drop report has one line per problem found (a row may have
several): `row, column, value, reason`.

For recipes to predict (`labels=False`) the label columns may be absent or empty; their unknown cells become -1
(Num, Y1, Y2 and the shape index Y3) and never drop a row.
"""
from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .files import save_csvs
from .recipes import (ABSOLUTE_ZERO_C, AMOUNT_COLUMNS, EMPTY_NAME, NAME_COLUMNS, PRODUCT_AMOUNT, PRODUCT_NAME,
                      REQUIRED_COLUMNS, UNKNOWN, RecipeError, finish, validate_frame)

PRODUCT = "Nanocrystal Composition"
INJECTION = "injection temperature/℃"
REACTION = "reaction temperature/℃"
TIME = "reaction time/min"
HEATING = "heating rate/℃ min-1"
SIZE = "D/nm"
DISTRIBUTION = "Size distribution/%"
SHAPE = "shape"
COUNT = "Number of statistics"
SHEET_SLOTS = 10
AMOUNT_HEADERS = tuple("additive amount/mmol" + (f".{k}" if k else "") for k in range(SHEET_SLOTS))
REAGENT_HEADERS = tuple("reactants" + (f".{k}" if k else "") for k in range(SHEET_SLOTS))
RECIPE_HEADERS = (PRODUCT, INJECTION, REACTION, TIME, HEATING, *AMOUNT_HEADERS, *REAGENT_HEADERS)
LABEL_HEADERS = (SIZE, DISTRIBUTION, SHAPE, COUNT)

UNKNOWN_SPEED = 13.90111345  # upstream's CSV value for a heating rate the sheet gives as `?` (see module docstring)
XLS_MAGIC = bytes.fromhex("d0cf11e0a1b11ae1")  # the OLE2 container of Excel 97-2003 .xls files
COINCIDENCE_KEY = (PRODUCT_NAME, "Temperature1", "Temperature2", "Time", "Y1")
DROP_COLUMNS = ("row", "column", "value", "reason")


@dataclass(frozen=True)
class Conversion:
    table: pd.DataFrame  # model layout, validated (recipes.finish form)
    drops: pd.DataFrame  # DROP_COLUMNS, one line per problem of a dropped row

    @property
    def dropped_rows(self) -> int:
        return self.drops["row"].nunique()

    @property
    def sheet_rows(self) -> int:
        """Recipe rows read (entirely empty rows are not recipes)."""
        return len(self.table) + self.dropped_rows


def _sheet_row(index: np.ndarray) -> np.ndarray:
    return index + 2  # the header is sheet row 1


def _blank(cells: pd.Series) -> pd.Series:
    """Empty cells: None, NaN, or only white space."""
    return cells.map(lambda v: v is None or (isinstance(v, float) and np.isnan(v))
                     or (isinstance(v, str) and not v.strip()))


def _numbers(cells: pd.Series) -> pd.Series:
    """Finite numbers; everything else (text, empty, inf) is NaN."""
    values = pd.to_numeric(cells.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
    return values.where(np.isfinite(values))


def _names(cells: pd.Series) -> pd.Series:
    return cells.where(~_blank(cells), "").astype(str).str.strip()


class _Problems:
    """Collects (row, column, value, reason) for the rows that will be dropped."""

    def __init__(self, sheet: pd.DataFrame):
        self.sheet = sheet
        self.parts: list[pd.DataFrame] = []

    def add(self, mask: pd.Series, header: str, reason: str) -> None:
        if not mask.any():
            return
        cells = self.sheet.loc[mask, header]
        self.parts.append(pd.DataFrame({"index": cells.index, "column": header,
                                        "value": cells.where(~_blank(cells), "").astype(str), "reason": reason}))

    def number(self, header: str, what: str, required: bool) -> pd.Series:
        """The column as numbers; if required, an unknown cell drops its row."""
        values = _numbers(self.sheet[header])
        if required:
            blank = _blank(self.sheet[header])
            self.add(blank, header, f"missing {what}")
            self.add(values.isna() & ~blank, header, f"non-numeric {what}")
        return values

    def frame(self) -> pd.DataFrame:
        found = pd.concat(self.parts, ignore_index=True) if self.parts else pd.DataFrame(
            {"index": pd.Series(dtype=np.int64), "column": [], "value": [], "reason": []})
        found = found.sort_values("index", kind="stable").reset_index(drop=True)
        found.insert(0, "row", _sheet_row(found.pop("index").to_numpy(dtype=np.int64)))
        return found[list(DROP_COLUMNS)]


def _check_headers(sheet: pd.DataFrame, source: str, labels: bool) -> None:
    needed = RECIPE_HEADERS + (LABEL_HEADERS if labels else ())
    missing = [h for h in needed if h not in sheet.columns]
    # an 11th reagent pair would be dropped without a word: the model layout reads slots A..J only
    unread = [h for h in sheet.columns if str(h).startswith(("additive amount/mmol", "reactants"))
              and h not in AMOUNT_HEADERS + REAGENT_HEADERS]
    problems = [f"{source}:1:{h}: missing required column" for h in missing]
    problems += [f"{source}:1:{h}: at most {SHEET_SLOTS} reagents per recipe are read; merge or remove this column"
                 for h in unread]
    if problems:
        raise RecipeError(problems)


def convert_frame(sheet: pd.DataFrame, source: str, shapes: list[str],
                  labels: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sheet as read by pandas (object cells, header row 1) -> (model table, drop report). Pure; see module rules."""
    _check_headers(sheet, source, labels)
    sheet = sheet.reset_index(drop=True)
    sheet = sheet.loc[~_blank(sheet).all(axis=1)]
    if sheet.empty:
        raise RecipeError([f"{source}:-:-: no rows below the header"])
    sheet = sheet.assign(**{h: None for h in LABEL_HEADERS if h not in sheet.columns})  # labels=False: all unknown
    problems = _Problems(sheet)

    product = _names(sheet[PRODUCT])
    problems.add(product == "", PRODUCT, "missing product")
    out = pd.DataFrame(index=sheet.index)
    out["ID"] = _sheet_row(sheet.index.to_numpy())
    for column, header in (("Temperature1", INJECTION), ("Temperature2", REACTION)):
        out[column] = problems.number(header, "temperature", required=True)
        problems.add(out[column] < ABSOLUTE_ZERO_C, header, "temperature below absolute zero")
    out["Speed"] = problems.number(HEATING, "heating rate", required=False)
    problems.add(out["Speed"] < 0, HEATING, "negative heating rate")
    out["Speed"] = out["Speed"].fillna(UNKNOWN_SPEED)
    out["Time"] = problems.number(TIME, "time", required=True)
    problems.add(out["Time"] < 0, TIME, "negative time")

    count = problems.number(COUNT, "number of statistics", required=False)
    problems.add((count < 0) | (count.notna() & (count != count.round())), COUNT,
                 "number of statistics is not a whole number >= 0")
    out["Num"] = count.fillna(UNKNOWN)
    out["Y1"] = problems.number(SIZE, "size", required=labels)
    problems.add(out["Y1"] <= 0, SIZE, "size is not positive")
    out["Y1"] = out["Y1"].fillna(UNKNOWN)
    out["Y2"] = problems.number(DISTRIBUTION, "size distribution", required=False)
    problems.add(out["Y2"] < 0, DISTRIBUTION, "negative size distribution")
    out["Y2"] = out["Y2"].fillna(UNKNOWN)
    index_of = {name.casefold(): i for i, name in enumerate(shapes)}
    shape_name = _names(sheet[SHAPE])
    shape = shape_name.str.casefold().map(index_of)
    if labels:
        problems.add(shape_name == "", SHAPE, "missing shape")
        problems.add(shape.isna() & (shape_name != ""), SHAPE, "shape name not in the shapes list")
    out["Y3"] = shape.fillna(UNKNOWN)
    out[PRODUCT_AMOUNT] = 1.0
    out[PRODUCT_NAME] = product

    for k, (amount_header, reagent_header) in enumerate(zip(AMOUNT_HEADERS, REAGENT_HEADERS)):
        amount, name = _numbers(sheet[amount_header]), _names(sheet[reagent_header])
        has_amount, has_name = ~_blank(sheet[amount_header]), name != ""
        problems.add(has_amount & amount.isna(), amount_header, "non-numeric amount")
        problems.add(has_amount & ~has_name, amount_header, "amount without a reagent name")
        problems.add(has_name & ~has_amount, reagent_header, "reagent without an amount")
        problems.add(has_name & (amount <= 0), amount_header, "amount is not positive")
        out[AMOUNT_COLUMNS[k]] = amount.where(has_name, 0.0)
        out[NAME_COLUMNS[k]] = name.where(has_name, EMPTY_NAME)
    for k in range(SHEET_SLOTS, len(AMOUNT_COLUMNS)):
        out[AMOUNT_COLUMNS[k]], out[NAME_COLUMNS[k]] = 0.0, EMPTY_NAME

    drops = problems.frame()
    kept = out.loc[~out["ID"].isin(drops["row"]), list(REQUIRED_COLUMNS)]
    # The rules above cover every check of the model layout; this makes a gap a loud bug, not a bad file.
    typed, remaining = validate_frame(kept.astype(str).reset_index(drop=True), source, len(shapes))
    if remaining:
        raise RecipeError(remaining)
    return finish(typed, len(shapes)), drops


def read_sheet(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise RecipeError([f"{path}:-:-: no such file"])
    if not zipfile.is_zipfile(path):  # an xlsx workbook is a zip archive
        with open(path, "rb") as handle:
            start = handle.read(8)
        what = ("an empty file" if not start else "an old .xls workbook (save it as .xlsx)" if start == XLS_MAGIC
                else "not an xlsx workbook (a CSV or text file? then give it a .csv name)")
        raise RecipeError([f"{path}:-:-: {what}"])
    try:
        return pd.read_excel(path, sheet_name=0, dtype=object, engine="openpyxl")
    except Exception as error:  # openpyxl fails on a damaged workbook in many ways: each is the file's fault
        raise RecipeError([f"{path}:-:-: not a readable xlsx workbook ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else 'damaged'})"]) from error


def convert_file(path: str | Path, shapes: list[str], labels: bool = True) -> Conversion:
    return Conversion(*convert_frame(read_sheet(path), str(path), shapes, labels))


def coincident_rows(table: pd.DataFrame, reference: pd.DataFrame) -> int:
    """Rows of `table` that also occur in `reference` on (product, temperatures, time, size), as multisets."""
    def keys(frame: pd.DataFrame) -> Counter:
        numbers = frame[list(COINCIDENCE_KEY[1:])].astype(float).round(6)
        return Counter(zip(frame[PRODUCT_NAME], *(numbers[c] for c in numbers.columns)))
    mine, theirs = keys(table), keys(reference)
    return sum(min(n, theirs[key]) for key, n in mine.items())


def save(result: Conversion, out: str | Path, report: str | Path | None, force: bool = False) -> None:
    """The model CSV (model columns only) and, if asked, the drop report; existing files are replaced only if forced."""
    targets = [(result.table[list(REQUIRED_COLUMNS)], Path(out))]
    if report:
        targets.append((result.drops, Path(report)))
    save_csvs(targets, force)

