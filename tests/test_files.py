"""Output files (files.py): a failed write leaves the old file and no temp file behind."""
from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from nanocrystal.files import save_csvs, write_all, write_atomic, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_text(target, "old")

    def half_then_fail(temp):
        temp.write_text("half")
        assert target.read_text() != "half"  # the reader still sees the old file while writing
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_save_csvs_checks_every_target_before_writing_any(tmp_path):
    frame = pd.DataFrame({"ID": [1], "size_nm": [3.25]})
    existing = tmp_path / "b.csv"
    existing.write_text("keep")
    with pytest.raises(FileExistsError, match="b.csv: exists; pass --force"):
        save_csvs([(frame, tmp_path / "a.csv"), (frame, existing)])
    assert not (tmp_path / "a.csv").exists() and existing.read_text() == "keep"
    save_csvs([(frame, tmp_path / "a.csv"), (frame, existing)], force=True)
    assert pd.read_csv(existing).equals(frame)


def test_results_are_written_with_the_usual_file_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        write_text(tmp_path / "note.txt", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "note.txt").stat().st_mode) == 0o644  # not mkstemp's owner-only 0600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_several_outputs_are_all_written_or_none(tmp_path):
    """The second output fails after the first was written to its temp file: neither appears, no temp file stays."""
    first, second = tmp_path / "table.csv", tmp_path / "report.csv"

    def fail(temp):
        raise OSError(28, "No space left on device", str(temp))

    with pytest.raises(OSError) as caught:
        write_all([(first, lambda temp: temp.write_text("rows")), (second, fail)])
    assert str(caught.value) == f"[Errno 28] No space left on device: '{second}'"  # the user's name, not the temp's
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_output_is_named_by_its_path(tmp_path):
    target = tmp_path / "no such folder" / "out.csv"
    with pytest.raises(FileNotFoundError, match=f"'{target}'$"):
        write_text(target, "x")
