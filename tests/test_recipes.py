"""Loaded counts of the real dataset, and each validation error on small hand-made bad files."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nanocrystal.recipes import RecipeError, pool_counts, read_table

N_SHAPES = 11


def test_loaded_counts(dataset):
    assert len(dataset.recipes) == 3489
    assert len(dataset.failures) == 5245
    assert dataset.n_shapes == 11 and dataset.shapes[9] == "sphere"
    assert pool_counts(dataset.recipes) == {"rows": 3489, "solid": 720, "weak": 2769, "evaluation": 617,
                                            "large": 103, "failed": 0}
    failures = dataset.failures
    assert failures["failed"].all() and (failures["Y3"] == 11).all()
    assert (failures[["Num", "Y1", "Y2"]] == -1).all().all()
    # The failure file interleaves A1,A2,B1,B2,...: read by name, its first row keeps its reagents.
    assert failures.loc[0, ["A1", "A2", "G1", "G2"]].tolist() == [186.4, "TPPe", 189.3, "OCEA"]


@pytest.fixture
def small(recipes_path: Path) -> pd.DataFrame:
    """The first 6 rows of the real recipe file, as strings (line 2 = PbSe, A2 = PbO, G2 = PlaceHolder)."""
    return pd.read_csv(recipes_path, dtype=str, keep_default_na=False, nrows=6)


def problems_of(frame: pd.DataFrame, path: Path) -> list[str]:
    frame.to_csv(path, index=False)
    with pytest.raises(RecipeError) as caught:
        read_table(path, N_SHAPES)
    return caught.value.problems


def set_cell(column: str, line: int, value: str):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[line - 2, column] = value
        return frame
    return change


BAD_FILES = {
    "missing column": (lambda f: f.drop(columns="Time"), "1:Time: missing required column"),
    "extra column": (lambda f: f.assign(Colour="red"), "1:Colour: unexpected column"),
    "non-numeric": (set_cell("Temperature2", 4, "hot"), "4:Temperature2: non-numeric value 'hot'"),
    "NaN": (set_cell("Temperature1", 3, "nan"), "3:Temperature1: missing value (NaN)"),
    "empty cell": (set_cell("Y1", 5, ""), "5:Y1: missing value (NaN)"),
    "empty count": (set_cell("Num", 5, ""), "5:Num: missing value (NaN)"),  # one problem, not also "not whole"
    "negative amount": (set_cell("B1", 6, "-2"), "6:B1: negative amount -2"),
    "below absolute zero": (set_cell("Temperature1", 2, "-300"), "2:Temperature1: temperature -300 °C is below"),
    "negative time": (set_cell("Time", 7, "-5"), "7:Time: negative time -5"),
    "shape outside the list": (set_cell("Y3", 3, "12"), "3:Y3: shape index 12 is not in the shapes list"),
    "fractional shape": (set_cell("Y3", 3, "2.5"), "3:Y3: shape index 2.5 is not in the shapes list"),
    "duplicate ID": (lambda f: set_cell("ID", 5, f.loc[0, "ID"])(f), "5:ID: duplicate ID 1"),
    "infinite amount": (set_cell("B1", 3, "inf"), "3:B1: non-finite value 'inf'"),
    "overflowing time": (set_cell("Time", 4, "1e400"), "4:Time: value 1e400 is too large (beyond ±3.4e+38"),
    # finite in float64, inf in the models' float32
    "float32 overflow": (set_cell("Temperature2", 3, "1e308"), "3:Temperature2: value 1e308 is too large"),
    "above the temperature ceiling": (set_cell("Temperature2", 3, "1500"),
                                      "3:Temperature2: temperature 1500 °C is above 1000 °C"),
    "negative heating rate": (set_cell("Speed", 5, "-1"), "5:Speed: negative heating rate -1"),
    "negative product amount": (set_cell("T1", 5, "-1"), "5:T1: negative amount -1"),
    "negative size distribution": (set_cell("Y2", 4, "-3"), "4:Y2: size distribution -3 must be >= 0 or -1"),
    "negative count": (set_cell("Num", 4, "-5"), "4:Num: particle count -5 must be >= 0 or -1"),
    "huge ID": (set_cell("ID", 4, "1e20"), "4:ID: 1e+20 is too large for a whole number"),
    "fractional ID": (set_cell("ID", 5, "4.5"), "5:ID: 4.5 is not a whole number"),
    "fractional count": (set_cell("Num", 6, "300.5"), "6:Num: 300.5 is not a whole number"),
    "amount without a name": (set_cell("G1", 4, "1.5"), "4:G1: amount > 0 but G2 names no substance"),
    "name with amount 0": (set_cell("A1", 2, "0"), "2:A2: substance 'PbO' has amount 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_each_error_names_file_row_and_column(case, small, tmp_path):
    change, expected = BAD_FILES[case]
    path = tmp_path / "bad.csv"
    problems = problems_of(change(small.copy()), path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:{expected}")


def test_all_problems_reported_together(small, tmp_path):
    frame = set_cell("Time", 3, "-1")(set_cell("A1", 4, "abc")(small.drop(columns="Speed")))
    path = tmp_path / "bad.csv"
    problems = problems_of(frame, path)
    assert [p.split(": ")[0] for p in problems] == [f"{path}:1:Speed", f"{path}:4:A1", f"{path}:3:Time"]


def test_unknown_labels_are_valid(small, tmp_path):
    """-1 marks an unknown count, size or shape (a recipe to predict); a good small file loads unchanged."""
    frame = set_cell("Y3", 2, "-1")(set_cell("Y1", 2, "-1")(small.copy()))
    frame.to_csv(tmp_path / "ok.csv", index=False)
    loaded = read_table(tmp_path / "ok.csv", N_SHAPES)
    assert loaded.loc[0, ["Y1", "Y3"]].tolist() == [-1, -1] and len(loaded) == 6
    assert loaded.loc[1, "Y1"] == 22.47 and not loaded["failed"].any()


def test_unreadable_or_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="no such file"):
        read_table(tmp_path / "absent.csv", N_SHAPES)


def test_empty_blank_lined_and_shifted_files(small, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(RecipeError, match="empty.csv:-:-: empty file"):
        read_table(empty, N_SHAPES)
    # a blank line is skipped, and the rows below it keep their own file line in messages
    lines = set_cell("Temperature2", 4, "abc")(small.copy()).to_csv(index=False).splitlines()
    blank = tmp_path / "blank.csv"
    blank.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")
    with pytest.raises(RecipeError) as caught:
        read_table(blank, N_SHAPES)
    assert caught.value.problems == [f"{blank}:5:Temperature2: non-numeric value 'abc'"]
    blank.write_text("\n".join(lines[:2] + [""] + lines[2:3]) + "\n")
    assert read_table(blank, N_SHAPES)["ID"].tolist() == [1, 2]
    # every row one field longer than the header (a trailing comma): pandas would shift every column by one
    shifted = tmp_path / "shifted.csv"
    shifted.write_text("\n".join([lines[0]] + [line + "," for line in lines[1:]]) + "\n")
    with pytest.raises(RecipeError, match="shifted.csv:2:-: every row has one field more than the header"):
        read_table(shifted, N_SHAPES)
