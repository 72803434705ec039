"""Reaction-intermediate augmentation: rule invariants (hypothesis), fold tables on the real data, manifest, loader."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanocrystal.augment import (AUG_ID_BASE, MANIFEST, AugmentError, augment_recipe, augment_table, content_keys,
                                 fold_tables, load_augmented, pair_index, write_folder)
from nanocrystal.config import resolve
from nanocrystal.recipes import (AMOUNT_COLUMNS, EMPTY_NAME, NAME_COLUMNS, OPTIONAL_COLUMNS, REQUIRED_COLUMNS,
                                 SLOTS)
from nanocrystal.runs import fold_data, inner_fold
from nanocrystal.splits import make_folds

REAGENTS = ["P", "Q", "R", "S", "T", "U", "V", "W", "X", "Y", "Z", "OA", "OLA", "TOP"]
# one spelling per pair, in both orders, as in the descriptor file
FAKE_INTERMEDIATES = {"P@Q", "R@P", "Q@S", "OLA@OA", "TOP@P", "S@R", "W@X", "Z@Y", "OA@TOP"}
FAKE_INDEX = pair_index(FAKE_INTERMEDIATES)
N_SHAPES = 11


def carriers(names, amounts, intermediates) -> dict[str, float]:
    """Each reagent's amount plus its share in intermediates (an intermediate of amount r holds r of each part)."""
    total: dict[str, float] = defaultdict(float)
    for name, amount in zip(names, amounts):
        if name != EMPTY_NAME:
            for part in name.split("@") if name in intermediates else [name]:
                total[part] += amount
    return dict(total)


def assert_balanced(before: dict[str, float], after: dict[str, float]) -> None:
    assert set(after) <= set(before)
    for name, amount in before.items():
        assert after.get(name, 0.0) == pytest.approx(amount, rel=1e-9, abs=1e-12), name


@st.composite
def recipes(draw):
    """13 slots: distinct substances (reagents, sometimes an intermediate already there) at random slots."""
    names = draw(st.lists(st.sampled_from(REAGENTS + sorted(FAKE_INTERMEDIATES)), min_size=1, max_size=len(SLOTS),
                          unique=True))
    amounts = draw(st.lists(st.floats(1e-6, 1e4), min_size=len(names), max_size=len(names)))
    slots = draw(st.permutations(range(len(SLOTS))))[:len(names)]
    row_names, row_amounts = [EMPTY_NAME] * len(SLOTS), [0.0] * len(SLOTS)
    for slot, name, amount in zip(slots, names, amounts):
        row_names[slot], row_amounts[slot] = name, amount
    return row_names, row_amounts


# derandomize: the same examples on every run, so a failure seen in CI reproduces
@settings(max_examples=150, deadline=None, derandomize=True)
@given(recipes(), st.integers(0, 2**32 - 1))
def test_rules_keep_amounts_valid_and_mass_balanced(recipe, seed):
    names, amounts = recipe
    new_names, new_amounts = augment_recipe(names, amounts, FAKE_INDEX, np.random.default_rng(seed))
    assert len(new_names) == len(new_amounts) == len(SLOTS)
    assert all(m >= 0 for m in new_amounts)
    # a slot names a substance exactly when it has an amount (what recipes.validate_frame demands)
    assert all((n == EMPTY_NAME) == (m == 0) for n, m in zip(new_names, new_amounts))
    assert len({n for n in new_names if n != EMPTY_NAME}) == sum(n != EMPTY_NAME for n in new_names)
    assert all(n in REAGENTS or n in FAKE_INTERMEDIATES for n in new_names if n != EMPTY_NAME)
    assert_balanced(carriers(names, amounts, FAKE_INTERMEDIATES), carriers(new_names, new_amounts, FAKE_INTERMEDIATES))
    assert (names, amounts) == recipe  # inputs untouched


@settings(max_examples=50, deadline=None, derandomize=True)
@given(recipes(), st.integers(0, 2**32 - 1))
def test_same_seed_same_output(recipe, seed):
    first = augment_recipe(*recipe, FAKE_INDEX, np.random.default_rng(seed))
    assert augment_recipe(*recipe, FAKE_INDEX, np.random.default_rng(seed)) == first


def _table(rows: list[tuple[list[str], list[float]]], conditions: list[float]) -> pd.DataFrame:
    frame = pd.DataFrame({"ID": np.arange(1, len(rows) + 1), "Temperature1": conditions[0],
                          "Temperature2": conditions[1], "Speed": conditions[2], "Time": conditions[3],
                          "Num": 350, "Y1": conditions[4], "Y2": 1.5, "Y3": 3, "T1": 1.0, "T2": "PbSe"})
    frame[list(AMOUNT_COLUMNS)] = np.array([amounts for _, amounts in rows])
    frame[list(NAME_COLUMNS)] = np.array([names for names, _ in rows], dtype=object)
    return frame[list(REQUIRED_COLUMNS)]


@settings(max_examples=12, deadline=None, derandomize=True)
@given(st.lists(recipes(), min_size=1, max_size=4), st.lists(st.floats(0, 400), min_size=5, max_size=5),
       st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_table_copies_everything_but_the_slots(rows, conditions, k, seed):
    source = _table(rows, conditions)
    generated = augment_table(source, FAKE_INDEX, k, seed)
    assert list(generated.columns) == [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]
    assert len(generated) == k * len(source)
    assert (generated["augmented"] == 1).all()
    assert generated["ID"].is_unique and (generated["ID"] > AUG_ID_BASE).all()
    origin = source.set_index("ID").loc[generated["source_ID"]].reset_index(drop=True)
    fixed = [c for c in REQUIRED_COLUMNS if c not in ("ID", *AMOUNT_COLUMNS, *NAME_COLUMNS)]
    pd.testing.assert_frame_equal(generated[fixed], origin[fixed])
    pd.testing.assert_frame_equal(augment_table(source, FAKE_INDEX, k, seed), generated)


def _full_row(pairs: dict[str, float]) -> tuple[list[str], list[float]]:
    """All 13 slots used (fillers have no intermediate), so the insert rule cannot apply."""
    fillers = {f"filler{i}": 1.0 for i in range(len(SLOTS) - len(pairs))}
    row = {**pairs, **fillers}
    return list(row), list(row.values())


@pytest.mark.parametrize("seed", range(5))
def test_replace_rule_uses_the_descriptor_spelling(seed):
    names, amounts = _full_row({"P": 5.0, "R": 2.0})  # the descriptor has R@P, not P@R
    new_names, new_amounts = augment_recipe(names, amounts, FAKE_INDEX, np.random.default_rng(seed))
    assert (new_names[:2], new_amounts[:2]) == (["P", "R@P"], [3.0, 2.0])
    names, amounts = _full_row({"P": 2.0, "R": 2.0})  # equal: the first component's slot takes it, the other empties
    new_names, new_amounts = augment_recipe(names, amounts, FAKE_INDEX, np.random.default_rng(seed))
    assert (new_names[:2], new_amounts[:2]) == ([EMPTY_NAME, "R@P"], [0.0, 2.0])


def test_recipe_without_pairs_is_unchanged():
    names, amounts = ["P", "T", "U"] + [EMPTY_NAME] * 10, [1.0, 2.0, 3.0] + [0.0] * 10
    assert augment_recipe(names, amounts, FAKE_INDEX, np.random.default_rng(0)) == (names, amounts)


# ---- real data ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(table, descriptors):
    """Paper folds over a slice of the real table (first 400 recipes and 200 failures), 3 rows per recipe."""
    part = pd.concat([table[~table["failed"]].head(400), table[table["failed"]].head(200)], ignore_index=True)
    folds = make_folds(part, "paper", 5, 0, [])
    intermediates = set(descriptors.intermediates())
    generated, selections = fold_tables(part, folds, pair_index(intermediates), 3, 0)
    return part, folds, intermediates, generated, selections


def test_real_rows_keep_balance_and_validity(small):
    part, _, intermediates, generated, _ = small
    source = part.set_index("ID").loc[generated["source_ID"]]
    assert (generated[list(AMOUNT_COLUMNS)] >= 0).all().all()
    columns = [list(NAME_COLUMNS), list(AMOUNT_COLUMNS)]
    for before, after in zip(zip(*(source[c].to_numpy().tolist() for c in columns)),
                             zip(*(generated[c].to_numpy().tolist() for c in columns))):
        assert_balanced(carriers(*before, intermediates), carriers(*after, intermediates))
    assert generated["ID"].min() > part["ID"].max()


def test_fold_files_exclude_validation_rows_and_duplicates(small, tmp_path):
    part, folds, _, generated, selections = small
    settings_ = {"split": "paper", "seed": 0, "n_folds": 5, "object_name": [], "k": 3, "augment_seed": 0}
    manifest = write_folder(tmp_path, generated, selections, settings_, {}, overwrite=False)
    assert sorted(manifest["files"]) == [f"fold{k}" for k in range(5)]
    recipe_keys = set(content_keys(part[~part["failed"]]))
    for fold in folds:
        rows = load_augmented(tmp_path, "paper", 0, 5, [], fold.name, N_SHAPES)
        entry = manifest["files"][fold.name]
        assert len(rows) == entry["written"] == entry["generated"] - entry["dropped"] > 0
        assert rows["source_ID"].dtype == np.int64 and (rows["augmented"] == 1).all()
        assert not set(rows["source_ID"]) & set(part["ID"].iloc[fold.valid])
        assert set(rows["source_ID"]) <= set(part["ID"].iloc[fold.train][~part["failed"].iloc[fold.train]])
        keys = content_keys(rows)
        assert keys.is_unique and not set(keys) & recipe_keys
        assert rows["ID"].is_unique
    # the slice has recipes with no possible intermediate and repeated outcomes: both are counted as dropped
    assert all(0 < e["dropped"] < e["generated"] for e in manifest["files"].values())


def test_a_run_adds_only_rows_made_from_its_own_training_rows(small, tmp_path):
    part, folds, _, generated, selections = small
    settings_ = {"split": "paper", "seed": 0, "n_folds": 5, "object_name": [], "k": 3, "augment_seed": 0}
    write_folder(tmp_path, generated, selections, settings_, {}, overwrite=False)
    source = load_augmented(tmp_path, "paper", 0, 5, [], "fold0", N_SHAPES).set_index("ID")["source_ID"]
    cfg = resolve("tiny", {"task": "size", "augmented": str(tmp_path), "inner_val_frac": 0.3})
    outer = fold_data(cfg, part, folds[0], N_SHAPES)
    inner = fold_data(cfg, part, inner_fold(part, folds[0], cfg), N_SHAPES)  # tuning: the same file, fewer sources
    for data in (outer, inner):
        added = data.train["ID"][data.train_augmented]
        assert len(added) > 0 and data.train_weak[data.train_augmented].all()  # untrusted: the tolerance band
        assert source.loc[added].isin(data.train["ID"][~data.train_augmented]).all()
    assert len(inner.train[inner.train_augmented]) < len(outer.train[outer.train_augmented])


def test_loader_refuses_other_folds_and_changed_files(small, tmp_path):
    _, _, _, generated, selections = small
    settings_ = {"split": "paper", "seed": 0, "n_folds": 5, "object_name": [], "k": 3, "augment_seed": 0}
    write_folder(tmp_path, generated, selections, settings_, {}, overwrite=False)
    for split, seed, n_folds, products in [("grouped", 0, 5, []), ("paper", 1, 5, []), ("paper", 0, 10, []),
                                           ("paper", 0, 5, ["PbSe"])]:
        with pytest.raises(AugmentError, match="made for split='paper', seed=0, n_folds=5"):
            load_augmented(tmp_path, split, seed, n_folds, products, "fold0", N_SHAPES)
    with pytest.raises(AugmentError, match="no augmented table for fold 'fold7'"):
        load_augmented(tmp_path, "paper", 0, 5, [], "fold7", N_SHAPES)
    with open(tmp_path / "fold1.csv", "a") as handle:
        handle.write(handle.name)
    with pytest.raises(AugmentError, match="fold1.csv: changed since augment.py wrote it"):
        load_augmented(tmp_path, "paper", 0, 5, [], "fold1", N_SHAPES)
    (tmp_path / "fold2.csv").unlink()
    with pytest.raises(AugmentError, match="fold2.csv: no such file"):
        load_augmented(tmp_path, "paper", 0, 5, [], "fold2", N_SHAPES)
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(AugmentError, match="no manifest.json"):
        load_augmented(tmp_path, "paper", 0, 5, [], "fold0", N_SHAPES)


def test_folder_for_other_settings_needs_overwrite(small, tmp_path):
    _, _, _, generated, selections = small
    paper = {"split": "paper", "seed": 0, "n_folds": 5, "object_name": [], "k": 3, "augment_seed": 0}
    write_folder(tmp_path, generated, selections, paper, {}, overwrite=False)
    write_folder(tmp_path, generated, selections, paper, {}, overwrite=False)  # same settings: same files
    lopo = {"split": None, "seed": None, "n_folds": None, "object_name": ["PbSe"], "k": 3, "augment_seed": 0}
    only = {"PbSe": selections["fold0"]}
    with pytest.raises(AugmentError, match="holds augmentation made with split='paper'.*--overwrite"):
        write_folder(tmp_path, generated, only, lopo, {}, overwrite=False)
    write_folder(tmp_path, generated, only, lopo, {}, overwrite=True)
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["PbSe.csv", MANIFEST]  # old fold files removed
    assert len(load_augmented(tmp_path, "paper", 0, 5, ["PbSe"], "PbSe", N_SHAPES)) > 0
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(AugmentError, match="not empty and has no manifest.json"):
        write_folder(tmp_path, generated, only, lopo, {}, overwrite=False)
