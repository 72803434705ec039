"""predict and design on tiny real runs (conftest.py: size_run, shape_run), built once per test run."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import mean_absolute_error

from nanocrystal.baselines import BlendModel
from nanocrystal.cli import main
from nanocrystal.config import ROOT, Config, resolve
from nanocrystal.convert import RECIPE_HEADERS
from nanocrystal.correction import SeriesCorrection
from nanocrystal.design import (DOMAIN_WEIGHT, OUT_OF_DOMAIN, DesignError, coverage_warnings, design, loss,
                                parse_vary)
from nanocrystal.encode import encode, fit_encoder
from nanocrystal.engine import ensemble_predict
from nanocrystal.files import save_csvs
from nanocrystal.predict import (CACHE_FILE, NEW_PRODUCT, load_predictor, load_run, read_recipes, shape_column,
                                 training_positions)
from nanocrystal.recipes import ABSOLUTE_ZERO_C, FLOAT32_MAX, MAX_TEMPERATURE_C, RecipeError
from nanocrystal.runs import (fit_neural_fold, fold_data, load_fold_models, neural_part, run_experiment,
                             tree_part)
from nanocrystal.splits import make_folds, run_folds

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def predictor(size_run, shape_run):
    return load_predictor(size_run, shape_run)


@pytest.fixture(scope="session")
def examples(predictor):
    return read_recipes(EXAMPLES / "recipes.csv", predictor.shapes)


def _fold_means(run: Path, table: pd.DataFrame, descriptors) -> dict[str, np.ndarray]:
    per_fold = []
    for fold in ("fold0", "fold1"):
        saved = load_fold_models(run / f"{fold}.pt", descriptors)
        per_fold.append(ensemble_predict(saved.members, encode(table, saved.encoder)))
    return {k: np.mean([p[k] for p in per_fold], axis=0) for k in ("size", "shape", "failed")} | {
        "fold0_size": per_fold[0]["size"]}


def test_ensemble_is_the_mean_of_the_fold_models(predictor, examples, size_run, shape_run, descriptors):
    table = examples.table
    prediction = predictor.predict(table)
    size = _fold_means(size_run, table, descriptors)
    shape = _fold_means(shape_run, table, descriptors)
    assert not np.allclose(size["size"], size["fold0_size"])  # the folds differ: the mean is not one fold's answer
    np.testing.assert_allclose(prediction["size_nm"], size["size"], rtol=1e-6)
    # a difference of two float32 sizes near 8 nm: absolute float32 rounding (~1e-6 nm) dominates when folds agree
    np.testing.assert_allclose(prediction["size_std"], np.abs(size["size"] - size["fold0_size"]), rtol=1e-4,
                               atol=1e-5)
    probabilities = prediction[[shape_column(n) for n in predictor.shapes]].to_numpy()
    np.testing.assert_allclose(probabilities, shape["shape"], rtol=1e-6)
    np.testing.assert_allclose(prediction["p_failed"], shape["failed"], rtol=1e-6)
    assert (prediction["shape"] == np.array(predictor.shapes)[shape["shape"].argmax(1)]).all()


def test_each_fold_keeps_the_encoder_of_its_own_training_rows(size_run, table, dataset, descriptors):
    cfg = Config.load(size_run / "config.json")
    encoders = []
    for fold in run_folds(cfg, table):
        train = fold_data(cfg, table, fold, dataset.n_shapes).train
        saved = load_fold_models(size_run / f"{fold.name}.pt", descriptors).encoder
        assert saved == fit_encoder(train, descriptors, cfg.amount_scaling, cfg.use_product, cfg.size_as_input)
        encoders.append(saved)
    assert encoders[0] != encoders[1]  # the folds' scalers differ: each saw its own rows


def test_example_file_reads_without_labels(examples):
    table = examples.table
    assert len(table) == 6 and table["ID"].tolist() == [1, 2, 3, 4, 5, 6]
    assert (table[["Num", "Y1", "Y2", "Y3"]] == -1).all().all() and not table["failed"].any()
    assert table.loc[0, ["A2", "A1", "G2", "G1"]].tolist() == ["PbO", 2.0, "PlaceHolder", 0.0]


def test_applicability_flag(predictor, table):
    """A recipe every fold trained on is in domain; 10,000 °C or 10^7 mmol is not, and the column is named."""
    positions = training_positions(predictor.size.cfg, table)
    shared = np.intersect1d(positions["fold0"], positions["fold1"])
    recipe = table.iloc[[shared[0]]].reset_index(drop=True)
    slot = "A1"
    absurd = pd.concat([recipe, recipe.assign(Temperature2=10_000.0), recipe.assign(**{slot: 1e7}),
                        recipe.assign(T2="Unobtainium")], ignore_index=True)
    prediction = predictor.predict(absurd)
    assert prediction["in_domain"].tolist() == [True, False, False, False]
    assert prediction.loc[0, "domain_distance"] < 1e-3  # its own training row is its nearest neighbour
    assert prediction["outside_training"].tolist() == ["", "Temperature2", f"{recipe.loc[0, 'A2']} amount",
                                                       NEW_PRODUCT]


def test_cache_is_written_and_reused(size_run, predictor, examples):
    assert (size_run / CACHE_FILE).is_file()
    again = load_run(size_run)
    for fold, cached in zip(predictor.size.folds, again.folds):
        assert [r.threshold for r in fold.references] == [r.threshold for r in cached.references]


def test_design_stays_in_ranges_and_repeats_with_the_seed(predictor, tmp_path):
    template = read_recipes(EXAMPLES / "template_pbse.csv", predictor.shapes).table
    ranges = parse_vary(["Temperature2=120:220", "Time=1:30", "OA=5:40"], template.iloc[0])
    first = design(predictor, template, 8.0, ranges, "sphere", top=5, trials=48, seed=3)
    table = first.table
    assert len(table) == 5 and first.evaluated == 48
    assert table["Temperature2"].between(120, 220).all() and table["Time"].between(1, 30).all()
    assert table["F1"].between(5, 40).all() and (table["F2"] == "OA").all()
    fixed = ["Temperature1", "Speed", "A1", "B1", "C1", "D1", "E1", "A2", "T2"]
    assert (table[fixed] == template[fixed].iloc[0]).all().all()  # nothing outside --vary changes
    assert table["loss"].is_monotonic_increasing
    save_csvs([(table, tmp_path / "design.csv")])  # the design CSV reads back as recipes with the same predictions
    again = predictor.predict(read_recipes(tmp_path / "design.csv", predictor.shapes).table)
    np.testing.assert_allclose(again["size_nm"], table["size_nm"], rtol=1e-6)
    assert first.warnings == []  # 120-220 °C, 1-30 min, 5-40 mmol OA: within the PbSe training recipes
    wide = parse_vary(["Temperature2=100:300"], template.iloc[0])
    assert coverage_warnings(predictor, "PbSe", wide) == [
        "Temperature2: range 100..300 reaches beyond the training recipes of PbSe (30..240)"]
    progress = []  # (evaluated, trials, best loss so far) after each batch
    again = design(predictor, template, 8.0, ranges, "sphere", 5, 48, seed=3,
                   on_batch=lambda *state: progress.append(state))
    pd.testing.assert_frame_equal(table, again.table)
    assert [(done, total) for done, total, _ in progress] == [(32, 48), (48, 48)]
    assert progress[-1][2] == table["loss"].min() and progress[0][2] >= progress[-1][2]
    other = design(predictor, template, 8.0, ranges, "sphere", 5, 48, seed=4).table
    assert not table[["Temperature2", "Time", "F1"]].equals(other[["Temperature2", "Time", "F1"]])


def test_predict_cli_prints_and_writes(size_run, shape_run, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    args = ["predict", "--size-run", str(size_run), "--shape-run", str(shape_run), str(EXAMPLES / "recipes.csv"),
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "size_nm" in printed and "in_domain" in printed and "CdSe-1" in printed
    assert "size_lo..size_hi: the 90% conformal interval" in printed  # what the columns mean, under the table
    written = pd.read_csv(out)
    assert written["ID"].tolist() == [1, 2, 3, 4, 5, 6] and {"p_failed", "prob_sphere"} <= set(written.columns)
    # the calibrated interval around every prediction, and the shape set, most probable shape first
    assert ((written["size_lo"] < written["size_nm"]) & (written["size_nm"] < written["size_hi"])).all()
    assert all(s.split("|")[0] == shape for s, shape in zip(written["shape_set"], written["shape"]))
    assert main([*args[:-2], "--confidence", "0.5", "--out", str(tmp_path / "narrow.csv")]) == 0
    narrow = pd.read_csv(tmp_path / "narrow.csv")
    assert ((narrow["size_hi"] - narrow["size_lo"]) < (written["size_hi"] - written["size_lo"])).all()
    assert (narrow["shape_set"].str.count("\\|") <= written["shape_set"].str.count("\\|")).all()
    assert main(args) == 2 and "exists; pass --force" in capsys.readouterr().err  # never replaced silently


def test_unknown_substance_exits_2_naming_it(size_run, tmp_path, capsys):
    recipes = pd.read_csv(EXAMPLES / "recipes.csv", dtype=str, keep_default_na=False)
    recipes.loc[2, "B2"] = "Unobtainium"
    path = tmp_path / "unknown.csv"
    recipes.to_csv(path, index=False)
    assert main(["predict", "--size-run", str(size_run), str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:4:B2: substance 'Unobtainium' has no descriptor (give its formula or SMILES with --substances FILE, "
        "or --allow-unknown uses zeros)"]
    out = tmp_path / "pred.csv"
    assert main(["predict", "--size-run", str(size_run), str(path), "--allow-unknown", "--out", str(out)]) == 0
    written = pd.read_csv(out, keep_default_na=False)
    assert written["warning"].tolist() == ["", "", "no descriptor (used as zeros): Unobtainium", "", "", ""]
    assert not written.loc[2, "in_domain"]  # a zero descriptor is no substance the model has seen


def test_xlsx_recipes_without_labels(predictor, sheet, tmp_path):
    """The human-readable layout without the label columns reads as recipes with unknown labels."""
    path = tmp_path / "recipes.xlsx"
    sheet.head(3).drop(columns=["D/nm", "Size distribution/%", "shape", "Number of statistics"]).to_excel(
        path, index=False)
    recipes = read_recipes(path, predictor.shapes)
    assert recipes.table["ID"].tolist() == [2, 3, 4] and (recipes.table["Y1"] == -1).all()
    assert len(predictor.predict(recipes.table)) == 3


def test_design_cli_rejects_a_bad_range(size_run, capsys):
    args = ["design", "--size-run", str(size_run), "--template", str(EXAMPLES / "template_pbse.csv"),
            "--target-size", "8", "--vary", "Temperature2=220:120", "Temperature1=100:2000", "Time=1:1e39",
            "Gold=1:2"]
    assert main(args) == 2
    assert capsys.readouterr().err.splitlines() == [
        "--vary 'Temperature2=220:120': need -273.15 <= LOW < HIGH <= 1000",
        "--vary 'Temperature1=100:2000': need -273.15 <= LOW < HIGH <= 1000",  # recipes.MAX_TEMPERATURE_C
        "--vary 'Time=1:1e39': need 0 <= LOW < HIGH <= 3.40282e+38",  # finite in the models' float32
        "--vary 'Gold=1:2': 'Gold' is neither a condition (Temperature1, Temperature2, Speed, Time) nor a substance "
        "of the template"]


def test_design_beyond_the_training_data_is_flagged(predictor):
    template = read_recipes(EXAMPLES / "template_pbse.csv", predictor.shapes).table
    result = design(predictor, template, 8.0, parse_vary(["Temperature2=500:900"], template.iloc[0]), top=3, trials=32)
    assert (~result.table["in_domain"]).all() and (result.table["outside_training"] == "Temperature2").all()
    assert result.table["Temperature2"].between(500, 900).all()
    assert result.warnings == ["Temperature2: range 500..900 reaches beyond the training recipes of PbSe (30..240)",
                               "3 of the 3 candidates are out of domain: their predictions are extrapolations"]


def test_a_blend_fold_put_together_from_its_parts_equals_the_fold_fitted_whole(table, dataset, descriptors):
    """--workers > 1 fits a blend fold's trees and transformer in separate processes: neither may depend on the other
    (here the trees are fitted first, in the whole fold last)."""
    cfg = resolve("tiny", {"epochs": 1, "threads": 1, "calibration_folds": 2, "tree_blend": 0.5,
                           "blend_models": ["lgbm"], "series_correction": True})
    data = fold_data(cfg, table, make_folds(table, "paper", 5, 0, [])[0], dataset.n_shapes)
    data = data.take(np.arange(len(data.train)) % 6 == 0)  # a sixth of the training rows: seconds
    logger = logging.getLogger(__name__)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a fold's process runs (--threads 1): two threads' sums differ in the last bits
    try:
        trees = tree_part(cfg, data, descriptors, dataset.n_shapes)
        parts = (neural_part(cfg, data, descriptors, dataset.n_shapes, logger), trees)
        together, together_checkpoint = fit_neural_fold(cfg, data, descriptors, dataset.n_shapes, logger, parts=parts)
        whole, whole_checkpoint = fit_neural_fold(cfg, data, descriptors, dataset.n_shapes, logger)
    finally:
        torch.set_num_threads(threads)
    for key in ("size", "lo", "hi"):
        np.testing.assert_array_equal(together[key], whole[key])
    assert together["stages"] == whole["stages"]
    assert together_checkpoint["trees"][0]["boosters"] == whole_checkpoint["trees"][0]["boosters"]


def test_tree_blend_and_correction_are_saved_and_predict_applies_them(tmp_path, table, dataset, descriptors):
    # two workers: the fold's trees and transformer in two processes, put together in this one
    cfg = resolve("tiny", {"folds": [0], "epochs": 1, "workers": 2, "threads": 2, "calibration_folds": 2,
                           "tree_blend": 0.4, "blend_models": ["lgbm", "et"], "lgbm_seeds": 2, "series_correction": True,
                           "save_path": str(tmp_path / "blend")})
    run = run_experiment(cfg)
    saved = load_fold_models(run / "fold0.pt", descriptors)
    assert [[type(m).__name__ for m in blended.models] for blended in saved.trees.models] == [["Booster"] * 2,
                                                                                               ["Forest"]]
    assert not any(len(m.classes) for m in saved.trees.models)  # size models
    record = json.loads((run / "fold0.json").read_text())
    # each tree model's inner-CV choice is on record
    assert {k: v["inner_metric"] for k, v in record["selection"].items()} == {"tree_blend_lgbm": "mae",
                                                                              "tree_blend_et": "mae"}
    oof = pd.read_csv(run / "oof_predictions.csv")
    valid = table[table["ID"].isin(oof["ID"])].set_index("ID").loc[oof["ID"]].reset_index()
    transformer_nm = ensemble_predict(saved.members, encode(valid, saved.encoder))["size"]
    lgbm_nm, et_nm = (m.predict(valid) for m in saved.trees.models)
    assert (lgbm_nm > 0).all() and (et_nm > 0).all()  # exp of a log-size model
    assert np.abs(transformer_nm - lgbm_nm).mean() > 0.01  # different models, so the weight matters
    trees_nm = (lgbm_nm + et_nm) / 2
    # the correction comes from the blend's own predictions for the fold's training rows
    train = fold_data(cfg, table, make_folds(table, "paper", 5, 0, [])[0], dataset.n_shapes).train
    in_sample = (0.6 * ensemble_predict(saved.members, encode(train, saved.encoder))["size"]
                 + 0.4 * saved.trees.predict(train))
    factors = SeriesCorrection.fit(train, in_sample, cfg.correction_scale, cfg.correction_shrink).factors(valid)
    np.testing.assert_allclose(saved.correction.factors(valid), factors, rtol=1e-6)
    assert (np.abs(factors - 1) > 1e-3).mean() > 0.3  # most validation rows have a series sibling in training
    np.testing.assert_allclose(oof["pred"], (0.6 * transformer_nm + 0.4 * trees_nm) * factors, rtol=1e-5, atol=1e-5)
    predicted = load_predictor(run).predict(valid)
    np.testing.assert_allclose(predicted["size_nm"], oof["pred"], rtol=1e-5, atol=1e-5)
    # predict's interval is the run's: the fold's calibration, its trees' spread, the series of its training rows
    np.testing.assert_allclose(predicted[["size_lo", "size_hi"]].to_numpy(), oof[["lo", "hi"]].to_numpy(), rtol=1e-5)
    assert predicted["seen_series"].tolist() == (oof["series"] == "seen").tolist()
    # the record scores each stage of that prediction, and metrics.json holds their means (one fold here)
    true_nm = valid["Y1"].to_numpy()
    for stage, pred_nm in [("transformer", transformer_nm), ("tree_blend", 0.6 * transformer_nm + 0.4 * trees_nm),
                           ("series_correction", oof["pred"])]:
        assert record["stages"][stage]["mae"] == pytest.approx(mean_absolute_error(true_nm, pred_nm), rel=1e-5)
    assert json.loads((run / "metrics.json").read_text())["stages"] == record["stages"]
    # LightGBM's seeds: the blend model is the mean of the boosters' log sizes; a checkpoint written before
    # --lgbm_seeds holds one "booster" and still loads
    entry = torch.load(run / "fold0.pt", weights_only=True)["trees"][0]
    boosters = [BlendModel.from_state({**entry, "boosters": [text]}, descriptors, dataset.n_shapes).predict(valid)
                for text in entry["boosters"]]
    np.testing.assert_allclose(lgbm_nm, np.exp(np.mean(np.log(boosters), axis=0)), rtol=1e-9)
    older = {k: v for k, v in entry.items() if k != "boosters"} | {"booster": entry["boosters"][0]}
    np.testing.assert_allclose(BlendModel.from_state(older, descriptors, dataset.n_shapes).predict(valid), boosters[0])


def test_a_checkpoint_with_the_older_lightgbm_blend_is_refused(tmp_path, descriptors):
    path = tmp_path / "fold0.pt"
    torch.save({"lgbm": {}, "config": {}}, path)
    with pytest.raises(ValueError, match="older version .*re-run it"):
        load_fold_models(path, descriptors)


def test_design_loss_ranks_by_probability_and_penalises_every_out_of_domain_candidate():
    """1 - p_within; out of domain by distance or by a value outside the training range (in_domain False at
    distance < 1) ranks below any in-domain candidate; equal probabilities are ordered by the point prediction."""
    prediction = pd.DataFrame({"size_nm": [8.0, 8.0, 8.0, 9.0, 8.5], "p_within": [0.9, 0.9, 0.9, 0.0, 0.0],
                               "domain_distance": [0.5, 0.5, 1.5, 0.5, 0.5],
                               "in_domain": [True, False, False, True, True]})
    values = loss(prediction, 8.0, None)
    np.testing.assert_allclose(values[:3], [0.1, 0.1 + OUT_OF_DOMAIN, 0.1 + OUT_OF_DOMAIN + 0.5 * DOMAIN_WEIGHT])
    assert values[0] < values[4] < values[3] < values[1]  # p 0.9 first; of the two at p 0, 8.5 nm before 9 nm
    shaped = prediction.assign(prob_sphere=[0.5] * 5, p_failed=[0.2] * 5)
    np.testing.assert_allclose(loss(shaped, 8.0, "sphere")[0], 1 - 0.9 * 0.5 * 0.8)


def test_design_refuses_a_substance_named_in_two_slots(predictor):
    template = read_recipes(EXAMPLES / "template_pbse.csv", predictor.shapes).table.iloc[0].copy()
    template["G2"], template["G1"] = "OA", 7.0  # OA in F and G
    with pytest.raises(DesignError, match="names 'OA' in 2 slots; merge them"):
        parse_vary(["OA=2:60"], template)


def test_recipes_to_predict_keep_their_file_lines(predictor, tmp_path):
    """Without an ID column the ID is the file line, blank lines included; an xlsx with no recipe is an error."""
    frame = pd.read_csv(EXAMPLES / "recipes.csv", dtype=str, keep_default_na=False).drop(columns="ID")
    header, first, second = frame.head(2).to_csv(index=False).splitlines()
    path = tmp_path / "no_id.csv"
    path.write_text("\n".join([header, first, "", second]) + "\n")
    recipes = read_recipes(path, predictor.shapes)
    assert recipes.table["ID"].tolist() == [2, 4] and recipes.lines.tolist() == [2, 4]
    header_only = tmp_path / "header_only.xlsx"
    pd.DataFrame(columns=list(RECIPE_HEADERS)).to_excel(header_only, index=False)
    with pytest.raises(RecipeError, match="header_only.xlsx:-:-: no rows below the header"):
        read_recipes(header_only, predictor.shapes)


def test_design_and_large_predictions_show_a_bar(size_run, table, monkeypatch, capsys):
    """On a terminal: a bar over the design trials with the best loss so far, and one per run for a large file."""
    monkeypatch.setattr("nanocrystal.progress.interactive", lambda: True)
    args = ["design", "--size-run", str(size_run), "--template", str(EXAMPLES / "template_pbse.csv"),
            "--target-size", "8", "--vary", "Time=1:30", "--trials", "40", "--top", "2"]
    assert main(args) == 0
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("design: 100%") and "40/40" in bar and "best_loss" in bar
    predictor = load_predictor(size_run)
    predictor.predict(table.head(100))
    assert capsys.readouterr().err == ""  # a small batch (each of design's) draws no bar
    predictor.predict(table.head(2000))
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith(f"{size_run.name}: 2,000 recipes: 100%") and "2/2" in bar


def test_the_largest_values_validation_accepts_give_finite_predictions(predictor, examples):
    """Finite in float32 is what validation asks; the models' own float32 products must not overflow on such a value
    (a heating rate of 3.4e38 °C/min once became inf, then NaN): out of domain, with finite numbers."""
    recipe = examples.table.head(1)
    edges = [("Speed", FLOAT32_MAX), ("Time", FLOAT32_MAX), ("A1", FLOAT32_MAX), ("A1", 1e-45),
             ("Temperature2", MAX_TEMPERATURE_C), ("Temperature1", ABSOLUTE_ZERO_C)]
    table = pd.concat([recipe.assign(**{column: value}) for column, value in edges], ignore_index=True)
    prediction = predictor.predict(table)
    numbers = prediction[["size_nm", "size_std", "p_failed", "domain_distance"]].to_numpy(float)
    assert np.isfinite(numbers).all() and (prediction["size_nm"] > 0).all()
    assert not prediction["in_domain"].any()
