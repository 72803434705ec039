"""Baselines: trees and their recipe vector, the MLP and LSTM, on small slices of the real data (seconds)."""
from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import NotFittedError

from nanocrystal import baselines
from nanocrystal.baselines import (LGBM_NEW_SERIES, LGBM_SIZE_CANDIDATES, WEAK_WEIGHTS, Candidate, candidates,
                                  few_shot_splits, fit_chosen, fit_selected, inner_splits, predict, predict_mean,
                                  sample_weights, selection_summary)
from nanocrystal.config import LGBM_SIZE_GRID, resolve
from nanocrystal.descriptors import DescriptorStore
from nanocrystal.encode import encode, fit_encoder
from nanocrystal.engine import ensemble_predict, train_member
from nanocrystal.features import CHEMISTRY_NAMES, USED_NAMES, RecipeFeaturizer, chemistry_columns
from nanocrystal.model import MODELS
from nanocrystal.predict import load_predictor
from nanocrystal.recipes import is_solid, series_keys
from nanocrystal.runs import NEURAL_MODELS, FoldData, fold_data, load_fold_models, make_model_factory, run_experiment
from nanocrystal.splits import paper_folds, run_folds, task_rows
from nanocrystal.substances import package_chemistry


@pytest.fixture(scope="module")
def fold_slice(table):
    """Fold 0 of the paper split, size rows, cut to a few hundred training rows to stay fast."""
    fold = paper_folds(table, 5, 0)[0]
    train = table.iloc[task_rows(table, fold.train, "size")[:600]].reset_index(drop=True)
    valid = table.iloc[fold.valid[:40]].reset_index(drop=True)
    return train, valid


def perturbed(valid: pd.DataFrame, store: DescriptorStore, rows: slice) -> tuple[pd.DataFrame, DescriptorStore]:
    """Validation rows `rows` get new amounts, conditions and a substance no training row has (with its own
    descriptor in the store): whatever is fitted on training rows only must not notice."""
    changed = valid.copy()
    changed.loc[changed.index[rows], ["A1", "B1", "Temperature2", "Time"]] *= 13.0
    changed.loc[changed.index[rows], "A2"] = "Unobtainium"
    vectors = {**store.vectors, "Unobtainium": np.full(store.dim, 50.0, np.float32)}
    return changed, DescriptorStore(vectors)


def test_features_values_and_unknown_products(fold_slice, descriptors):
    train, valid = fold_slice
    featurizer = RecipeFeaturizer(descriptors, n_components=4, n_substances=5).fit(train)
    features = featurizer.transform(train)
    names = featurizer.feature_names_
    assert features.shape == (len(train), len(names)) and len(names) == 5 + 10 + 40 + 4 + 4 + 5 + 2
    row = train.iloc[0]
    amounts = row[["A1", "B1", "C1", "D1", "E1", "F1", "G1", "H1", "I1", "J1"]].to_numpy(float)
    assert features[0, names.index("log_amount_A")] == pytest.approx(np.log1p(row["A1"]))
    assert features[0, names.index("n_substances")] == (amounts > 0).sum()
    assert features[0, names.index("log_time")] == pytest.approx(np.log1p(row["Time"]))
    # empty slots carry zeros, not the projection of a zero vector
    empty = [s for s, name in zip("ABCDEFGHIJ", row[USED_NAMES]) if name == "PlaceHolder"]
    assert empty and all(features[0, names.index(f"desc_{s}_0")] == 0.0 for s in empty)
    # the most frequent training substance's own column holds its amount, wherever its slot
    top = featurizer.substances_[0]
    slot = next(c for c in USED_NAMES if (train[c] == top).any())
    first = int(np.flatnonzero((train[slot] == top).to_numpy())[0])
    assert features[first, names.index(f"log_amount[{top}]")] == pytest.approx(
        np.log1p(train.iloc[first][slot.replace("2", "1")]))
    unknown = valid.copy()
    unknown["T2"] = "Cs2NaYbCl6"  # a real product without a descriptor
    featurizer.transform(unknown)
    assert featurizer.missing_["products"]["Cs2NaYbCl6"] == len(valid)
    with pytest.raises(NotFittedError):
        RecipeFeaturizer(descriptors).transform(train)


def test_featurizer_is_fitted_on_training_rows_only(fold_slice, descriptors):
    train, valid = fold_slice
    before = RecipeFeaturizer(descriptors, 8, 20).fit(train)
    changed, store = perturbed(valid, descriptors, slice(None))
    after = RecipeFeaturizer(store, 8, 20).fit(train)
    np.testing.assert_array_equal(before.transform(train), after.transform(train))
    # ... while the perturbed validation rows do change (the test can fail)
    assert not np.allclose(before.transform(valid), after.transform(changed))
    # fitting on the validation rows too would have changed the PCA
    leaky = RecipeFeaturizer(store, 8, 20).fit(pd.concat([train, changed]))
    assert not np.allclose(leaky.transform(train), before.transform(train))


def fit_tree_fold(cfg, data, store, n_shapes):
    """What runs.run_fold does for a tree model: choose, refit, predict the validation rows once."""
    fitted = fit_selected(cfg, data, store, n_shapes)
    return {**fitted.predict(cfg, data.valid, n_shapes), "selection": fitted.selection}


@pytest.mark.parametrize("task", ["size", "shape"])
def test_fold_predictions_ignore_other_validation_rows(fold_slice, descriptors, task):
    """Selection, PCA, substance list and model see the training rows only: changing half of the validation rows
    leaves the predictions for the other half exactly as they were."""
    train, valid = fold_slice
    cfg = resolve("cpu", {"model": "dt", "task": task, "threads": 1})
    weak = ~is_solid(train).to_numpy()
    first = fit_tree_fold(cfg, FoldData(train, valid, weak, np.zeros(len(train), bool)), descriptors, 11)
    changed, store = perturbed(valid, descriptors, slice(20, None))
    second = fit_tree_fold(cfg, FoldData(train, changed, weak, np.zeros(len(train), bool)), store, 11)
    key = "size" if task == "size" else "shape"
    np.testing.assert_array_equal(first[key][:20], second[key][:20])
    assert first["selection"] == second["selection"]
    assert len(first["selection"]["candidates"]) == len(candidates(cfg)) == (9 if task == "size" else 3)
    assert first["selection"]["weak_weight"] in WEAK_WEIGHTS[task]
    assert first["selection"]["summary"] == selection_summary(cfg)
    if task == "shape":
        assert first["shape"].shape == (40, 11) and np.allclose(first["shape"].sum(axis=1), 1.0)
        assert np.isnan(first["failed"]).all()  # no failure rows in this training slice: not modelled


def test_few_shot_recipes_weigh_shot_weight_in_the_tree_fits(table, descriptors):
    """--shot_weight: in a few-shot fold, the held-out product's k recipes among the training rows weigh shot_weight
    times their weak-row weight; a tree that weighs them up follows them more closely."""
    cfg = resolve("cpu", {"model": "dt", "object_name": ["Ni"], "shots": 5, "shot_weight": 50.0, "threads": 1})
    data = fold_data(cfg, table, run_folds(cfg, table)[0], 11)
    assert data.train_shots.sum() == 5 and set(data.train.loc[data.train_shots, "T2"]) == {"Ni"}
    kept = data.take(np.flatnonzero(data.train_shots | (np.arange(len(data.train)) % 2 == 0)))
    assert kept.train_shots.sum() == 5 and set(kept.train.loc[kept.train_shots, "T2"]) == {"Ni"}
    np.testing.assert_allclose(sample_weights(cfg, Candidate({}, 0.3), data.train_weak, data.train_shots),
                               np.where(data.train_weak, 0.3, 1.0) * np.where(data.train_shots, 50.0, 1.0))
    assert sample_weights(cfg, Candidate({}, 1.0), np.zeros(3, bool), None) is None
    shots = data.train[data.train_shots]
    log_error = {}
    for weight in (1.0, 50.0):
        weighted = resolve("cpu", {"model": "dt", "object_name": ["Ni"], "shots": 5, "shot_weight": weight})
        tree = fit_chosen(weighted, data.train, data.train_weak, descriptors,
                          Candidate(dict(min_samples_leaf=10), 1.0), shots=data.train_shots)
        log_error[weight] = np.abs(np.log(tree.predict(weighted, shots, 11)["size"] / shots["Y1"])).mean()
    assert log_error[50.0] < 0.5 * log_error[1.0]
    with pytest.raises(ValueError, match="--shot_weight 2.0 .* needs --shots"):
        resolve("cpu", {"shot_weight": 2.0})


def test_a_few_shot_folds_inner_folds_are_few_shot_folds(table):
    """Each inner fold of a few-shot fold scores training products with k of their recipes in its fit rows, as
    shots; the held-out product's own recipes always train; a product of k recipes or fewer is not scored."""
    cfg = resolve("cpu", {"model": "lgbm", "object_name": ["Ni"], "shots": 3})
    data = fold_data(cfg, table, run_folds(cfg, table)[0], 11)
    weak, products = np.asarray(data.train_weak, bool), data.train["T2"].to_numpy(object)
    pool = np.flatnonzero(data.train["Y1"].between(0, 20, inclusive="right") & ~data.train["failed"])
    sizes = pd.Series(products[pool]).value_counts().drop("Ni")  # Ni: its 3 shots
    scored_products = []
    for fit, scored, fit_shots in few_shot_splits(cfg, data.train, weak, data.train_shots):
        assert len(np.intersect1d(fit, scored)) == 0 and data.train_shots[fit].sum() == 3  # Ni's shots train
        assert not data.train_shots[scored].any()
        lent = fit[fit_shots & ~data.train_shots[fit]]
        for product in np.unique(products[scored]):
            assert (products[lent] == product).sum() == 3  # k scored-pool recipes of it train, weighted as shots
            assert (products[fit] == product).sum() == 3 and sizes[product] > 3
        assert set(products[lent]) == set(products[scored])
        scored_products += list(np.unique(products[scored]))
    small = set(sizes.index[sizes <= 3])
    assert small and not small & set(scored_products)  # too few recipes to lend 3 and score the rest
    assert len(scored_products) == len(set(scored_products)) == (sizes > 3).sum()


def test_a_few_shot_fold_chooses_its_candidate_on_few_shot_inner_folds(table, descriptors, monkeypatch):
    cfg = resolve("cpu", {"model": "dt", "task": "size", "object_name": ["Ni"], "shots": 3, "threads": 1})
    data = fold_data(cfg, table, run_folds(cfg, table)[0], 11)
    seen_shots = []
    real_fit_predict = baselines.fit_predict
    monkeypatch.setattr(baselines, "fit_predict", lambda *args: seen_shots.append(args[-1]) or real_fit_predict(*args))
    fit_selected(cfg, data, descriptors, 11)
    assert len(seen_shots) == 3 and all(s.sum() > 3 for s in seen_shots)  # Ni's 3 shots and the lent recipes


@pytest.mark.parametrize("task", ["size", "shape"])
def test_lgbm_seeds_average_fits_that_differ_only_in_seed(fold_slice, descriptors, task):
    train, valid = fold_slice
    data = FoldData(train, valid, ~is_solid(train).to_numpy(), np.zeros(len(train), bool))
    settings = {"model": "lgbm", "task": task, "threads": 2, "lgbm_huber_delta": 0.0}
    one = fit_selected(resolve("cpu", {**settings, "lgbm_seeds": 1}), data, descriptors, 11)
    three = fit_selected(resolve("cpu", {**settings, "lgbm_seeds": 3}), data, descriptors, 11)
    assert three.selection["seeds"] == [0, 1, 2] and one.selection["seeds"] == [0]
    assert three.selection["candidates"] == one.selection["candidates"]  # chosen once, with the run's seed
    x = three.features.transform(valid)
    key = "size" if task == "size" else "shape"
    each = [predict(task, e, x, 11)[key] for e in three.estimators]
    np.testing.assert_array_equal(each[0], predict(task, one.estimators[0], x, 11)[key])
    assert np.abs(each[1] - each[0]).mean() > 1e-3  # the seed changes LightGBM's column sampling
    mean = predict_mean(task, three.estimators, x, 11)[key]  # what fit_tree_fold and the blend predict
    expected = np.exp(np.mean(np.log(each), axis=0)) if task == "size" else np.mean(each, axis=0)  # size: log mean
    np.testing.assert_allclose(mean, expected, rtol=1e-12)


def test_lgbm_huber_delta_sets_the_size_loss_only(fold_slice, descriptors):
    train, valid = fold_slice
    data = FoldData(train, valid, ~is_solid(train).to_numpy(), np.zeros(len(train), bool))
    fitted = {task: fit_selected(resolve("cpu", {"model": "lgbm", "task": task, "threads": 2, "lgbm_seeds": 1,
                                                 "lgbm_huber_delta": 0.05}), data, descriptors, 11)
              for task in ("size", "shape")}
    size_model = fitted["size"].estimators[0].regressor_
    assert (size_model.objective, size_model.alpha) == ("huber", 0.05)
    assert fitted["size"].selection["params"]["objective"] == "huber"
    assert fitted["shape"].estimators[0].objective is None  # LightGBM's own multiclass loss
    squared = fit_selected(resolve("cpu", {"model": "lgbm", "threads": 1, "lgbm_huber_delta": 0.0, "lgbm_seeds": 1}),
                           data, descriptors, 11).estimators[0]
    x = fitted["size"].features.transform(valid)
    assert squared.regressor_.objective is None
    assert np.abs(fitted["size"].estimators[0].predict(x) - squared.predict(x)).mean() > 1e-3
    with pytest.raises(ValueError, match="lgbm_huber_delta"):
        resolve("cpu", {"lgbm_huber_delta": -1.0})


def test_a_candidate_with_its_own_loss_keeps_it(fold_slice, descriptors):
    train, _ = fold_slice
    cfg = resolve("tiny", {"model": "lgbm", "task": "size", "lgbm_seeds": 1, "lgbm_huber_delta": 0.05})
    weak = ~is_solid(train).to_numpy()
    assert Candidate(LGBM_NEW_SERIES, 1.0) in candidates(resolve("new_product"))
    own, preset = (fit_chosen(cfg, train, weak, descriptors, Candidate(params, 1.0)).estimators[0].regressor_
                   for params in (LGBM_NEW_SERIES, dict(min_child_samples=3)))
    assert (own.objective, own.alpha, own.extra_trees, own.num_leaves) == ("huber", 0.18, True, 38)
    assert (preset.objective, preset.alpha, preset.num_leaves) == ("huber", 0.05, 63)  # --lgbm_huber_delta


def test_lgbm_grid_names_lightgbms_size_candidates(fold_slice, descriptors):
    """--lgbm_grid chooses which candidates a size fold's inner CV compares (each at every weak-row weight), and the
    run's selection records them; shape keeps its own grid, and an unknown name is refused by the config."""
    assert resolve("cpu").lgbm_grid == ["leaf20"] and resolve("new_series").lgbm_grid == list(LGBM_SIZE_CANDIDATES)
    assert set(LGBM_SIZE_CANDIDATES) == set(LGBM_SIZE_GRID)
    train, valid = fold_slice
    weak = ~is_solid(train).to_numpy()
    for names in (["leaf20"], ["leaf3", "new_series"]):
        cfg = resolve("tiny", {"model": "lgbm", "task": "size", "lgbm_seeds": 1, "lgbm_grid": names, "threads": 1})
        selection = fit_tree_fold(cfg, FoldData(train, valid, weak, np.zeros(len(train), bool)), descriptors,
                                  11)["selection"]
        tried = [c["params"] for c in selection["candidates"]]
        assert tried == [LGBM_SIZE_CANDIDATES[n] for n in names for _ in WEAK_WEIGHTS["size"]]
        assert (str(LGBM_SIZE_CANDIDATES[names[-1]]) in selection["summary"]) == (len(names) > 1)  # a grid of one
    shape = resolve("cpu", {"model": "lgbm", "task": "shape"})
    assert [c.params for c in candidates(shape)] == baselines.GRIDS["shape"]["lgbm"]
    for bad in (["leaf7"], []):
        with pytest.raises(ValueError, match="--lgbm_grid"):
            resolve("cpu", {"lgbm_grid": bad})


def test_inner_splits_keep_groups_apart(fold_slice):
    train, _ = fold_slice
    weak = ~is_solid(train).to_numpy()
    for split, groups in (("paper", np.arange(len(train))), ("grouped", series_keys(train).to_numpy())):
        cfg = resolve("cpu", {"model": "dt", "split": split})
        scored_all = []
        for fit_rows, scored_rows in inner_splits(cfg, train, weak):
            assert not weak[scored_rows].any()  # scored like the outer folds: solid rows only
            assert not np.isin(groups[fit_rows], groups[scored_rows]).any()
            scored_all.append(scored_rows)
        assert len(scored_all) == 3 and len(np.unique(np.concatenate(scored_all))) == (~weak).sum()


def test_shape_probabilities_with_a_failure_class():
    estimator = SimpleNamespace(classes_=np.array([0, 9, 11]),
                                predict_proba=lambda x: np.array([[0.2, 0.3, 0.5], [0.0, 0.0, 1.0]]))
    result = predict("shape", estimator, np.zeros((2, 3)), 11)
    np.testing.assert_allclose(result["failed"], [0.5, 1.0])
    np.testing.assert_allclose(result["shape"][0, [0, 9]], [0.4, 0.6])
    np.testing.assert_allclose(result["shape"][1], np.full(11, 1 / 11))  # all mass on failure: no shape preferred


def test_augmented_rows_are_refused(fold_slice, descriptors):
    train, valid = fold_slice
    cfg = resolve("cpu", {"model": "dt", "augmented": "somewhere"})
    with pytest.raises(ValueError, match="augmented"):
        fit_tree_fold(cfg, FoldData(train, valid, np.zeros(len(train), bool), np.zeros(len(train), bool)),
                      descriptors, 11)


# ---- the neural baselines -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["mlp", "lstm"])
def test_neural_baseline_learns_and_predicts(fold_slice, descriptors, model):
    train, valid = fold_slice
    cfg = resolve("tiny", {"model": model, "epochs": 8, "lr": 3e-3, "batch_size": 64})
    encoder = fit_encoder(train, descriptors, "log", True, False)
    factory = make_model_factory(cfg, encoder, descriptors, 11)
    assert type(factory()) is MODELS[model] and model in NEURAL_MODELS
    snapshots, losses = train_member(factory, encode(train, encoder), cfg, seed=0)
    assert losses[-1] < 0.7 * losses[0]
    prediction = ensemble_predict(snapshots, encode(valid, encoder))
    assert prediction["size"].shape == (40,) and np.isfinite(prediction["size"]).all()
    assert prediction["shape"].shape == (40, 11) and np.allclose(prediction["shape"].sum(axis=1), 1.0)
    assert prediction["failed"].shape == (40,)
    assert snapshots[0].cls_embedding(encode(valid, encoder)).shape == (40, cfg.d_model)


@pytest.mark.parametrize("model", ["transformer", "mlp", "lstm"])
def test_a_recipe_is_read_the_same_in_any_batch(fold_slice, descriptors, model):
    """A batch keeps only as many slots as its fullest recipe, and padding slots hold non-zero tokens: every model
    must give a recipe the same output whatever the batch around it."""
    train, valid = fold_slice
    encoder = fit_encoder(train, descriptors, "log", True, False)
    torch.manual_seed(0)
    net = make_model_factory(resolve("tiny", {"model": model}), encoder, descriptors, 11)().eval()
    whole = encode(valid, encoder)
    counts = whole.present.sum(1)
    small = int(torch.argmin(counts))
    assert counts[small] < whole.present.shape[1]  # the row really is padded in the whole batch
    alone = encode(valid.iloc[[small]], encoder)
    assert alone.present.shape[1] == counts[small]
    with torch.no_grad():
        torch.testing.assert_close(net.cls_embedding(alone)[0], net.cls_embedding(whole)[small])


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "mlp"
    return run_experiment(resolve("tiny", {"model": "mlp", "folds": [0], "threads": 1, "save_path": str(path)}))


def test_mlp_checkpoint_round_trips(mlp_run, table, descriptors):
    saved = load_fold_models(mlp_run / "fold0.pt", descriptors)
    cfg, encoder, members = saved.cfg, saved.encoder, saved.members
    assert cfg.model == "mlp" and all(type(m) is MODELS["mlp"] for m in members)
    valid = table.iloc[paper_folds(table, 5, 0)[0].valid]
    saved = pd.read_csv(mlp_run / "oof_predictions.csv")["pred"].to_numpy()
    np.testing.assert_allclose(ensemble_predict(members, encode(valid, encoder))["size"], saved, rtol=1e-5, atol=1e-5)
    metrics = json.loads((mlp_run / "metrics.json").read_text())
    assert metrics["model"] == "mlp" and metrics["selection"].startswith("fixed hyper-parameters")
    assert "selection" not in metrics["per_fold"][0]  # nothing was chosen per fold


def test_predict_takes_an_mlp_run(mlp_run, table, descriptors):
    predictor = load_predictor(mlp_run)
    rows = table.iloc[paper_folds(table, 5, 0)[0].valid[:5]]
    saved = load_fold_models(mlp_run / "fold0.pt", descriptors)
    expected = ensemble_predict(saved.members, encode(rows, saved.encoder))["size"]
    np.testing.assert_allclose(predictor.predict(rows)["size_nm"], expected, rtol=1e-5)


def test_tree_fold_record_keeps_its_selection(tmp_path):
    path = tmp_path / "dt"
    run_experiment(resolve("cpu", {"model": "dt", "task": "shape", "use_failures": False, "folds": [0],
                                   "threads": 1, "workers": 1, "save_path": str(path)}))
    selection = json.loads((path / "fold0.json").read_text())["selection"]
    cfg = resolve("cpu", {"model": "dt", "task": "shape"})
    assert selection["summary"] == selection_summary(cfg) and selection["inner_metric"] == "1 - accuracy"
    scores = [c["inner_score"] for c in selection["candidates"]]
    assert len(scores) == len(candidates(cfg))
    best = selection["candidates"][int(np.argmin(scores))]
    assert selection["params"] == best["params"] and 0.0 < min(scores) < 1.0
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["per_fold"][0]["selection"] == selection
    # progress: the log says what the minutes of tree fitting are spent on (a terminal also gets a bar)
    assert "fold0: dt: choosing hyper-parameters by inner cross-validation, then the refit" in (
        path / "log.txt").read_text()


@pytest.mark.parametrize("model", ["et", "rf"])
def test_forest_tensors_predict_as_sklearn(fold_slice, descriptors, model):
    from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor, RandomForestRegressor

    from nanocrystal.baselines import Forest, forest_state

    train, valid = fold_slice
    features = RecipeFeaturizer(descriptors, n_components=4, n_substances=5).fit(train)
    x_train, x_valid = features.transform(train), features.transform(valid)
    regressor = (ExtraTreesRegressor if model == "et" else RandomForestRegressor)(n_estimators=7, random_state=0)
    regressor.fit(x_train, np.log(train["Y1"]))
    state = forest_state(regressor)
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # what torch.load(weights_only=True) reads
    np.testing.assert_array_equal(Forest.from_state(state, classifier=False).predict(x_valid),
                                  regressor.predict(x_valid))
    # classes with missing values seen in training: NaN rows follow sklearn's learned direction
    x_train[::3, 0] = np.nan
    x_valid[::2, 0] = np.nan
    classifier = ExtraTreesClassifier(n_estimators=5, random_state=0).fit(x_train, train["Y3"])
    np.testing.assert_allclose(Forest.from_state(forest_state(classifier), classifier=True).predict(x_valid),
                               classifier.predict_proba(x_valid), rtol=1e-12, atol=1e-12)


CHEMISTRY = {"PbO": ("PbO", "inorganic"), "Se": ("Se", "inorganic"), "OA": ("C18H34O2", "organic"),
             "ODE": ("C18H36", "organic"), "PbSe": ("PbSe", "inorganic"), "Au": ("Au", "inorganic")}


def _recipe(table, product, substances):
    row = table.iloc[[0]].copy()
    row[USED_NAMES] = "PlaceHolder"
    row[[name.replace("2", "1") for name in USED_NAMES]] = 0.0
    for (name, amount), slot in zip(substances, "ABCDEFGHIJ"):
        row[f"{slot}2"], row[f"{slot}1"] = name, amount
    row["T2"] = product
    return row


def test_chemistry_columns_read_formulas_amounts_and_roles(table):
    recipes = pd.concat([_recipe(table, "PbSe", [("PbO", 1.0), ("Se", 2.0), ("OA", 3.0), ("ODE", 10.0)]),
                         _recipe(table, "Au", [("OA", 1.0), ("Unlisted", 4.0)]),
                         _recipe(table, "NoSuchFormula-1", [("PbO", 1.0)])], ignore_index=True)
    columns = pd.DataFrame(chemistry_columns(recipes, CHEMISTRY), columns=CHEMISTRY_NAMES)
    pbse, au, unknown = (columns.iloc[i] for i in range(3))
    assert pbse["product_n_elements"] == 2 and pbse["product_mean_Z"] == pytest.approx((82 + 34) / 2 / 100)
    assert pbse["product_max_X"] == pytest.approx(2.55 / 4) and pbse["product_min_X"] == pytest.approx(2.33 / 4)
    # Pb (the less electronegative) from PbO only, Se from Se; twice the product's Se:Pb ratio of 1
    assert pbse["log_cation_mmol"] == pytest.approx(np.log1p(1.0))
    assert pbse["log_anion_mmol"] == pytest.approx(np.log1p(2.0))
    assert pbse["log_cation_anion_excess"] == pytest.approx(np.log(1.0001 / 2.0001))
    assert (pbse["log_organic_mmol"], pbse["log_precursor_mmol"]) == pytest.approx((np.log1p(13.0), np.log1p(3.0)))
    assert pbse["log_organic_per_precursor"] == pytest.approx(np.log(13.001 / 3.001))
    assert pbse["log_largest_share"] == pytest.approx(np.log(10 / 16))
    assert (pbse["n_organic"], pbse["n_precursor"]) == (2, 2)
    # a metal: its atoms only (none here: the unlisted substance counts as a precursor without atoms), no ratio
    assert au["product_n_elements"] == 1 and au["log_cation_mmol"] == 0.0
    assert np.isnan(au["log_anion_mmol"]) and np.isnan(au["log_cation_anion_excess"])
    assert (au["n_organic"], au["n_precursor"]) == (1, 1)
    # a product without a formula: its columns are missing values for the trees, the roles are still there
    product_columns = [name for name in CHEMISTRY_NAMES if name.startswith("product_")]
    assert unknown[product_columns].isna().all() and unknown["n_precursor"] == 1


def test_chemistry_features_round_trip_and_take_new_substances(fold_slice, descriptors, table):
    train, valid = fold_slice
    plain = RecipeFeaturizer(descriptors, 4, 5).fit(train)
    featurizer = RecipeFeaturizer(descriptors, 4, 5, chemistry=dict(package_chemistry())).fit(train)
    x = featurizer.transform(valid)
    assert featurizer.feature_names_ == plain.feature_names_ + CHEMISTRY_NAMES
    np.testing.assert_array_equal(x[:, :len(plain.feature_names_)], plain.transform(valid))
    state = torch.load(_saved(featurizer.to_state()), weights_only=True)  # what a checkpoint holds
    np.testing.assert_array_equal(RecipeFeaturizer.from_state(state, descriptors).transform(valid), x)
    assert "chemistry" not in plain.to_state()
    # a substance given by formula at predict time reaches the element columns
    recipe = _recipe(table, "PbSe", [("NewPb", 1.0), ("Se", 2.0), ("ODE", 10.0)])
    cation = featurizer.feature_names_.index("log_cation_mmol")
    assert featurizer.transform(recipe)[0, cation] == 0.0
    told = featurizer.with_substances({}, {"NewPb": ("Pb(C2H3O2)2", "metal-organic")})
    assert told.transform(recipe)[0, cation] == pytest.approx(np.log1p(1.0))
    assert featurizer.transform(recipe)[0, cation] == 0.0  # the fitted featurizer is unchanged


def _saved(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer
