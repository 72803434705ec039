"""Shared fixtures: the real fetched dataset (scripts/test.sh fetches it first), loaded once per test run."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nanocrystal.config import ROOT, resolve
from nanocrystal.convert import Conversion, convert_frame, read_sheet
from nanocrystal.descriptors import DescriptorStore, load_descriptors
from nanocrystal.recipes import RECIPES_FILE, Dataset, load_dataset
from nanocrystal.runs import run_experiment
from nanocrystal.splits import combined_table

SHEET_FILE = "source/Raw recipe dataset.xlsx"
FEATS_FILE = "unioml_feats_20240309_1x_ours_1x_mof.pkl"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return ROOT / "data"


@pytest.fixture(scope="session")
def recipes_path(data_dir: Path) -> Path:
    return data_dir / RECIPES_FILE


@pytest.fixture(scope="session")
def feats_path() -> Path:
    return ROOT / "feats" / FEATS_FILE


@pytest.fixture(scope="session")
def dataset(data_dir: Path) -> Dataset:
    return load_dataset(data_dir)


@pytest.fixture(scope="session")
def table(dataset: Dataset) -> pd.DataFrame:
    return combined_table(dataset)


@pytest.fixture(scope="session")
def descriptors(feats_path: Path) -> DescriptorStore:
    return load_descriptors(feats_path)


@pytest.fixture(scope="session")
def sheet_path(data_dir: Path) -> Path:
    return data_dir / SHEET_FILE


@pytest.fixture(scope="session")
def sheet(sheet_path: Path) -> pd.DataFrame:
    """The raw recipe sheet as pandas reads it (object cells). Tests copy it before changing it."""
    return read_sheet(sheet_path)


@pytest.fixture(scope="session")
def conversion(sheet: pd.DataFrame, sheet_path: Path, dataset: Dataset) -> Conversion:
    return Conversion(*convert_frame(sheet, str(sheet_path), dataset.shapes))


def _tiny_run(tmp_path_factory, task: str) -> Path:
    path = tmp_path_factory.mktemp("runs") / task
    # seconds: a whole 2-fold split (a finished result for the report), one epoch; the shape run without the 5,245
    # failed syntheses (its failed head still exists)
    cfg = resolve("tiny", {"task": task, "n_folds": 2, "epochs": 1, "threads": 1, "use_failures": False,
                           "save_path": str(path)})
    return run_experiment(cfg)


@pytest.fixture(scope="session")
def size_run(tmp_path_factory) -> Path:
    """A finished tiny transformer size run (a 2-fold paper split) with its checkpoints."""
    return _tiny_run(tmp_path_factory, "size")


@pytest.fixture(scope="session")
def shape_run(tmp_path_factory) -> Path:
    return _tiny_run(tmp_path_factory, "shape")
