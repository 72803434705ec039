"""Output files: every result, table and figure is written through a temp file and renamed, so a reader never sees
half a file and an interrupted write leaves the old file (or none)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

import pandas as pd

Writer = Callable[[Path], object]  # creates the file at the path it is given


def write_atomic(path: Path, write: Writer) -> None:
    """`write(temp)` creates a temp file in the same folder (so it gets the usual file mode), then it is renamed."""
    write_all([(path, write)])


def write_all(outputs: list[tuple[Path, Writer]]) -> None:
    """Several files, all or none: every temp file is written before any is renamed into place, so a failure (an
    unwritable folder, a full disk) leaves no new output and no temp file. An OSError names the output's path."""
    # the temp name keeps within a file-name limit of 255 bytes; the index keeps two outputs' temps apart
    temps = [path.with_name(f".{path.name[:200]}.{os.getpid()}.{k}.part") for k, (path, _) in enumerate(outputs)]
    try:
        for (path, write), temp in zip(outputs, temps):
            with _named(path, temp):
                write(temp)
        for (path, _), temp in zip(outputs, temps):
            with _named(path, temp):
                os.replace(temp, path)
    finally:
        for temp in temps:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)


@contextlib.contextmanager
def _named(path: Path, temp: Path):
    """An OSError about the temp file is reported for `path`, the name the user gave or will look for."""
    try:
        yield
    except OSError as error:
        if error.filename is None or str(error.filename) != str(temp):
            raise
        raise type(error)(error.errno, error.strerror, str(path)) from None


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda temp: temp.write_text(text))


def _csv_writer(frame: pd.DataFrame) -> Writer:
    # %.15g: a number typed into a spreadsheet (at most 15 significant digits) is written back exactly.
    return lambda temp: frame.to_csv(temp, index=False, float_format="%.15g")


def check_target(path: Path) -> None:
    """An output file name whose folder exists or can be made, by us (OSError with a plain message otherwise)."""
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(f"{path}: no permission to write in {parent}")
            break


def save_csvs(tables: list[tuple[pd.DataFrame, Path]], force: bool = False) -> None:
    """User-named output tables (their folders made if needed), all or none: every path checked before any is
    written; an existing file is replaced only if forced."""
    for _, path in tables:
        check_target(path)
    existing = [str(path) for _, path in tables if path.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)}: exists; pass --force to replace it")
    for _, path in tables:
        path.parent.mkdir(parents=True, exist_ok=True)
    write_all([(path, _csv_writer(frame)) for frame, path in tables])
