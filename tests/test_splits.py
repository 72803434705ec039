"""Folds: the paper split partitions the 617 evaluation rows; the grouped split holds out whole recipe series."""
from __future__ import annotations

import numpy as np
import pytest

from nanocrystal.recipes import evaluation_mask, has_size, is_solid, series_keys
from nanocrystal.splits import grouped_folds, make_folds, paper_folds, product_folds, task_rows


@pytest.fixture(scope="module")
def evaluation(table) -> np.ndarray:
    return np.flatnonzero(evaluation_mask(table).to_numpy())


@pytest.fixture(scope="module")
def grouped(table) -> list:
    return grouped_folds(table, 5, 0)


@pytest.mark.parametrize("split", ["paper", "grouped"])
def test_folds_partition_the_evaluation_rows(table, evaluation, grouped, split):
    folds = paper_folds(table, 5, 0) if split == "paper" else grouped
    valid = np.concatenate([fold.valid for fold in folds])
    assert len(evaluation) == 617 and len(folds) == 5
    assert np.array_equal(np.sort(valid), evaluation)  # every evaluation row exactly once
    for fold in folds:
        assert not np.isin(fold.valid, fold.train).any()


def test_paper_folds_train_on_everything_else(table):
    folds = paper_folds(table, 5, 0)
    assert [len(f.valid) for f in folds] == [124, 124, 123, 123, 123]
    for fold in folds:
        assert len(fold.train) + len(fold.valid) == len(table) == 3489 + 5245
    assert not np.array_equal(folds[0].valid, paper_folds(table, 5, 1)[0].valid)  # the seed matters


def test_grouped_folds_hold_out_whole_series(table, grouped):
    keys = series_keys(table).to_numpy()
    for fold in grouped:
        held_out = np.isin(keys, np.unique(keys[fold.valid]))
        assert not np.isin(np.flatnonzero(held_out), fold.train).any()
        assert np.array_equal(np.sort(fold.train), np.flatnonzero(~held_out))


def test_leave_one_product_out(table):
    (fold,) = make_folds(table, "paper", 5, 0, ["PbSe"])
    products = table["T2"].to_numpy()
    assert fold.name == "PbSe" and set(products[fold.valid]) == {"PbSe"}
    assert "PbSe" not in set(products[fold.train])
    assert (table["Y1"].to_numpy()[fold.valid] <= 20).all()
    with pytest.raises(ValueError, match="no recipe has this product"):
        product_folds(table, ["Unobtainium"])


def test_task_rows(table):
    everything = np.arange(len(table))
    size = task_rows(table, everything, "size")
    assert not table["failed"].to_numpy()[size].any() and (table["Y1"].to_numpy()[size] <= 20).all()
    shape = task_rows(table, everything, "shape")
    assert len(shape) == len(table)
    assert len(task_rows(table, everything, "shape", use_failures=False)) == 3489
    failed, solid = table["failed"].to_numpy(), is_solid(table).to_numpy()
    no_weak = task_rows(table, everything, "shape", use_weak=False)  # weak recipes leave, failed syntheses stay
    assert failed[no_weak].sum() == failed.sum() and (solid | failed)[no_weak].all()
    assert len(no_weak) == (solid | failed).sum()
    no_large = task_rows(table, everything, "shape", use_large=False)
    size_nm = table["Y1"].to_numpy()
    assert not (size_nm[no_large] > 20).any() and len(no_large) == len(table) - (size_nm > 20).sum()


def test_grouped_folds_depend_on_the_seed(table, grouped):
    other = grouped_folds(table, 5, 1)
    assert any(not np.array_equal(np.sort(a.valid), np.sort(b.valid)) for a, b in zip(grouped, other))


def test_few_shot_folds_move_k_recipes_of_the_product_into_training(table):
    products = table["T2"].to_numpy()
    sized = np.flatnonzero((products == "Ni") & has_size(table).to_numpy())
    (zero,) = product_folds(table, ["Ni"])
    by_k = {k: product_folds(table, ["Ni"], shots=k, draws=3, seed=0) for k in (1, 3)}
    for k, folds in by_k.items():
        assert [f.name for f in folds] == [f"Ni-{k}shot-{d}" for d in range(3)]
        for fold in folds:
            shots = fold.train[products[fold.train] == "Ni"]
            assert len(shots) == k and np.isin(shots, sized).all()  # k sized recipes of the product, no other row
            assert not np.isin(fold.valid, fold.train).any()
            np.testing.assert_array_equal(np.sort(np.concatenate([shots, fold.valid])), zero.valid)
            np.testing.assert_array_equal(np.setdiff1d(fold.train, shots), zero.train)
    for one, three in zip(by_k[1], by_k[3]):  # a draw's shots are nested over k
        assert np.isin(one.train, three.train).all()
    assert len({tuple(f.train[products[f.train] == "Ni"]) for f in by_k[3]}) == 3  # draws differ
    with pytest.raises(ValueError, match="--shots 30: Ni has 21 sized recipes"):
        product_folds(table, ["Ni"], shots=30)
    with pytest.raises(ValueError, match="--shots needs --object_name"):
        make_folds(table, "paper", 5, 0, [], shots=1)
