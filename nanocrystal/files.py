"""Output files: every result, table and figure is written through a temp file and renamed, so a reader never sees
half a file and an interrupted write leaves the old file (or none)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pandas as pd


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """`write(temp)` creates a temp file in the same folder (so it gets the usual file mode), then it is renamed."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda temp: temp.write_text(text))


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """A table in the model layout, its folder made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # %.15g: a number typed into a spreadsheet (at most 15 significant digits) is written back exactly.
    write_atomic(path, lambda temp: frame.to_csv(temp, index=False, float_format="%.15g"))


def check_target(path: Path) -> None:
    """An output file name whose folder exists or can be made (OSError with a plain message otherwise)."""
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{path}: {parent} is a file, not a folder")
            break


def save_csvs(tables: list[tuple[pd.DataFrame, Path]], force: bool = False) -> None:
    """User-named output tables: every path checked before any is written; an existing file is replaced only if
    forced."""
    for _, path in tables:
        check_target(path)
    existing = [str(path) for _, path in tables if path.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)}: exists; pass --force to replace it")
    for frame, path in tables:
        write_csv(frame, path)
