"""`python -m nanocrystal validate` and `convert` as a user runs them."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pytest

from nanocrystal.cli import main
from nanocrystal.convert import UNKNOWN_SPEED
from nanocrystal.recipes import read_table


def test_validate_real_file(recipes_path, feats_path, capsys):
    assert main(["validate", str(recipes_path), "--feats", str(feats_path)]) == 0
    out = capsys.readouterr().out
    assert f"{recipes_path}: 3,489 rows" in out
    assert "solid 720, weak 2,769, evaluation 617, large 103, failed 0" in out
    assert "reagents without a descriptor: 0 names in 0 rows" in out
    assert "products without a descriptor: 15 names in 17 rows" in out
    assert "    Cs2NaYbCl6: 1" in out


def test_validate_broken_copy_names_each_problem(recipes_path, tmp_path, capsys):
    """One NaN temperature, one negative amount and one dropped column: exit 2, each named by row and column."""
    frame = pd.read_csv(recipes_path, dtype=str, keep_default_na=False)
    frame.loc[10, "Temperature1"] = "NaN"
    frame.loc[2000, "C1"] = "-3.5"
    broken = tmp_path / "broken.csv"
    frame.drop(columns="Speed").to_csv(broken, index=False)
    assert main(["validate", str(broken)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{broken}:1:Speed: missing required column",
                   f"{broken}:12:Temperature1: missing value (NaN)",
                   f"{broken}:2002:C1: negative amount -3.5",
                   f"{broken}: 3 problem(s)"]


def test_validate_checks_a_predict_input_with_predict(tmp_path, capsys):
    """A file to predict leaves out labels and unused slots: the training layout refuses it and says so; --predict
    accepts it, and names a bad cell by row and column."""
    from nanocrystal.config import ROOT

    example = ROOT / "examples" / "recipes.csv"
    assert main(["validate", str(example)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"{example}:1:Y1: missing required column" in err
    assert err[-1] == f"{example}: a valid input for predict (labels or slots left out): check it with validate --predict"
    assert main(["validate", str(example), "--predict"]) == 0
    out = capsys.readouterr().out
    assert f"{example}: 6 rows" in out and "PbSe 3" in out and "reagents a recipe: 4 to 6" in out
    frame = pd.read_csv(example, dtype=str, keep_default_na=False)
    frame.loc[1, "Time"] = "soon"
    broken = tmp_path / "broken.csv"
    frame.to_csv(broken, index=False)
    assert main(["validate", str(broken), "--predict"]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:3:Time:" in err and "check it with validate --predict" not in err


def test_convert_small_sheet(sheet, tmp_path, capsys):
    """A 5-row sheet with dirty cells: kept rows carry unknown markers, the rest are in the report."""
    small = sheet.head(5).copy()
    small.loc[0, "Number of statistics"] = "?"
    small.loc[1, "heating rate/℃ min-1"] = "？"
    small.loc[2, "D/nm"] = "*"
    xlsx, out, report = tmp_path / "mine.xlsx", tmp_path / "out.csv", tmp_path / "drops.csv"
    small.to_excel(xlsx, index=False)
    args = ["convert", str(xlsx), str(out), "--report", str(report), "--reference", ""]
    assert main(args) == 0
    assert "5 rows -> 4 converted, 1 dropped (1 problems" in capsys.readouterr().out
    table = read_table(out, 11)
    assert table["ID"].tolist() == [2, 3, 5, 6]
    assert table.loc[0, "Num"] == -1 and table.loc[1, "Speed"] == UNKNOWN_SPEED
    assert pd.read_csv(report).to_dict("records") == [
        {"row": 4, "column": "D/nm", "value": "*", "reason": "non-numeric size"}]

    before = out.read_bytes()
    assert main(args) == 2  # never replaces an earlier output silently
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == before
    out.unlink()
    assert main(args) == 2 and not out.exists()  # the report exists: nothing is written, not half the outputs
    assert main([*args, "--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drops.csv", "mine.xlsx", "out.csv"]  # no temp files left


def test_convert_names_an_output_path_that_cannot_be_written(sheet, tmp_path, capsys):
    xlsx = tmp_path / "mine.xlsx"
    sheet.head(2).to_excel(xlsx, index=False)
    folder, blocker = tmp_path / "folder", tmp_path / "blocker"
    folder.mkdir()
    blocker.write_text("a file")
    for out, message in [(folder, f"{folder}: is a folder; give a file name"),
                         (blocker / "out.csv", f"{blocker / 'out.csv'}: {blocker} is a file, not a folder")]:
        assert main(["convert", str(xlsx), str(out), "--reference", "", "--force"]) == 2
        assert capsys.readouterr().err.strip() == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "folder", "mine.xlsx"]


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.mark.parametrize("separator,name", [(";", "semicolon"), ("\t", "tab")])
def test_a_csv_with_another_separator_gets_one_hint(recipes_path, tmp_path, capsys, separator, name):
    path = tmp_path / "excel.csv"
    pd.read_csv(recipes_path, dtype=str, nrows=3).to_csv(path, index=False, sep=separator)
    assert main(["validate", str(path)]) == 2
    assert _one_line(capsys) == (f"{path}:1:-: the columns are {name}-separated; save the file as a comma-separated "
                                 "CSV (with decimal points)")


def test_unreadable_inputs_are_one_line_each(recipes_path, tmp_path, capsys):
    header_only, binary = tmp_path / "header.csv", tmp_path / "binary.csv"
    header_only.write_text(recipes_path.read_text().splitlines()[0] + "\n")
    binary.write_bytes(bytes(range(256)) * 4)
    for args, message in [
        (["validate", str(header_only)], f"{header_only}:-:-: no rows below the header"),
        (["validate", str(binary)], f"{binary}:-:-: a binary file, not a CSV"),
        (["validate", str(recipes_path), "--shapes", str(tmp_path / "none.txt")],
         f"{tmp_path / 'none.txt'}:-:-: no such file (the shapes list: one shape name per line)"),
        (["validate", str(recipes_path), "--shapes", str(binary)],
         f"{binary}:-:-: not a text file (the shapes list: one shape name per line)"),
    ]:
        assert main(args) == 2
        assert _one_line(capsys) == message


@pytest.mark.parametrize("content,message", [
    (b"ID,Time\n1,2\n", "not an xlsx workbook (a CSV or text file? then give it a .csv name)"),
    (b"", "an empty file"),
    (bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504), "an old .xls workbook (save it as .xlsx)"),
    ("zip", "not a readable xlsx workbook (KeyError"),
])
def test_a_file_named_xlsx_that_is_no_workbook(tmp_path, capsys, content, message):
    path = tmp_path / "recipes.xlsx"
    if content == "zip":  # a zip archive without a workbook inside
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hello")
    else:
        path.write_bytes(content)
    assert main(["convert", str(path), str(tmp_path / "out.csv"), "--reference", ""]) == 2
    assert _one_line(capsys).startswith(f"{path}:-:-: {message}")
    assert not (tmp_path / "out.csv").exists()


def test_convert_refuses_a_sheet_with_only_a_header(sheet, tmp_path, capsys):
    xlsx = tmp_path / "empty.xlsx"
    sheet.head(0).to_excel(xlsx, index=False)
    assert main(["convert", str(xlsx), str(tmp_path / "out.csv"), "--reference", ""]) == 2
    assert _one_line(capsys) == f"{xlsx}:-:-: no rows below the header"


def test_convert_writes_nothing_when_the_report_cannot_be_written(sheet, tmp_path, capsys):
    """Every output is written to its temp file before any is put in place: the main CSV does not appear alone."""
    xlsx, out = tmp_path / "mine.xlsx", tmp_path / "out.csv"
    sheet.head(3).to_excel(xlsx, index=False)
    report = Path("/proc/nanocrystal-report.csv")  # no file can be made there, not even by root
    assert main(["convert", str(xlsx), str(out), "--report", str(report), "--reference", ""]) == 2
    line = _one_line(capsys)
    assert str(report) in line and ".part" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.xlsx"]
