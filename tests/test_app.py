"""The web app (nanocrystal/app.py) in Streamlit's AppTest, and the public functions it reads, on the tiny runs of
conftest.py (size_run, shape_run)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from nanocrystal.app import load_models, size_interval
from nanocrystal.cli import main
from nanocrystal.config import ROOT, resolve
from nanocrystal.design import parse_vary, response, series_measurements
from nanocrystal.predict import (CACHE_FILE, known_substances, load_predictor, load_run, nearest_training, newest_run,
                                 product_overview, recipe_table, training_recipes)
from nanocrystal.recipes import AMOUNT_COLUMNS, NAME_COLUMNS, RecipeError, series_keys
from nanocrystal.runs import run_experiment

EXAMPLE = ROOT / "examples" / "recipes.csv"
PBSE = [("PbO", 4.0), ("Se", 4.0), ("ODE", 40.0), ("OLA", 4.0), ("TOP", 4.5), ("OA", 18.0)]


@pytest.fixture(autouse=True)
def keep_main_module(monkeypatch):
    """AppTest leaves sys.modules["__main__"] as its (deleted) script; a later test's spawned workers would re-run that
    path, die at start, and the process pool would respawn them forever."""
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])


@pytest.fixture(scope="session")
def predictor(size_run, shape_run):
    return load_predictor(size_run, shape_run, write_cache=False)


@pytest.fixture(scope="session")
def training(predictor):
    return training_recipes(predictor.size)


def pbse(n_shapes: int, **conditions) -> pd.DataFrame:
    values = {"temperature1": 150, "temperature2": 150, "time_min": 5, "heating_rate": 0, **conditions}
    return recipe_table("PbSe", PBSE, n_shapes=n_shapes, **values)


@pytest.fixture(scope="module")
def uncalibrated_size_run(tmp_path_factory) -> Path:
    """A tiny size run trained without calibration (--calibration_folds 0), as runs trained before it existed."""
    cfg = resolve("tiny", {"task": "size", "n_folds": 2, "epochs": 1, "threads": 1, "calibration_folds": 0,
                           "save_path": str(tmp_path_factory.mktemp("runs") / "uncalibrated")})
    return run_experiment(cfg)


def page_script(page: str, size_run: str, shape_run: str | None) -> None:
    """One page of the app as `streamlit run` shows it (AppTest runs this function's body as the script)."""
    from nanocrystal.app import PAGES, load_models

    PAGES[page](load_models(size_run, shape_run))


def app_page(page: str, size_run: Path, shape_run: Path | None) -> AppTest:
    return AppTest.from_function(page_script, args=(page, str(size_run), shape_run and str(shape_run)),
                                 default_timeout=60).run()


def type_name(at: AppTest, key: str, name: str) -> None:
    """A name typed into a selectbox that accepts new options: the browser sends it as the widget's value; AppTest
    only sends listed options, so it is listed first (before every run that keeps it)."""
    box = at.selectbox(key=key)
    box.options.append(name)
    box.set_value(name)


def no_failure(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# ---- the public functions the app uses ---------------------------------------------------------------------------------

def test_the_app_loader_only_reads_the_run_folder(size_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(size_run, run, ignore=shutil.ignore_patterns(CACHE_FILE))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    first = load_models(str(run), None).predictor  # the app's loader
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    load_run(run)  # the default (predict, design) caches the reference
    assert (run / CACHE_FILE).is_file()
    again = load_run(run, write_cache=False)  # reads the cache it finds, writes nothing
    assert again.folds[0].references[0].threshold == first.size.folds[0].references[0].threshold


def test_recipe_from_a_form_and_its_problems_in_words(predictor):
    n_shapes = len(predictor.shapes)
    table = pbse(n_shapes, time_min=12.5)
    assert len(table) == 1 and table["Time"].iloc[0] == 12.5 and table["T2"].iloc[0] == "PbSe"
    assert table[list(NAME_COLUMNS[:6])].iloc[0].tolist() == [n for n, _ in PBSE]
    assert table[list(AMOUNT_COLUMNS[6:])].iloc[0].eq(0).all()
    with pytest.raises(RecipeError) as error:
        recipe_table("PbSe", [("PbO", 4), ("Se", 0), ("", 3)], 150, -300, -5, 0, n_shapes)
    assert sorted(error.value.problems) == sorted([
        "reaction temperature: temperature -300 °C is below absolute zero",
        "time: negative time -5",
        "substance 2: substance 'Se' has amount 0",
        "amount of substance 3: amount > 0 but substance 3 names no substance"])


def test_vocabulary_hides_reaction_intermediates(predictor, training):
    substances = known_substances(predictor)
    assert any("@" in name for name in predictor.encoders()[0].vocabulary)  # augment's intermediates are there
    assert "@" not in "".join(substances) and {"PbO", "Se", "OA"} <= set(substances)
    assert "PlaceHolder" not in substances and "PlaceHolder" not in training.products()
    assert {"PbSe", "CdSe-1"} <= set(training.products())


def test_nearest_training_recipes_of_a_training_recipe(predictor, training):
    both = np.intersect1d(training.positions["fold0"], training.positions["fold1"])
    position = both[training.table.iloc[both]["Y1"].to_numpy() > 0][0]  # a measured recipe both folds trained on
    recipe = training.table.iloc[[position]].reset_index(drop=True)
    nearest = nearest_training(predictor.size, training, recipe, k=4)
    assert len(nearest) == 4 and (nearest["recipe"] == 0).all()
    assert nearest["distance"].is_monotonic_increasing and nearest["distance"].iloc[0] < 1e-3
    first = training.table[training.table["ID"] == nearest["ID"].iloc[0]]
    assert nearest["measured_size_nm"].iloc[0] == pytest.approx(first["Y1"].iloc[0])
    assert nearest["reagents"].iloc[0].startswith(f"{first['A2'].iloc[0]} {first['A1'].iloc[0]:g}")


def test_dataset_by_product(training):
    table = training.table
    overview = product_overview(training).set_index("product")
    recipes = table[~table["failed"]]
    assert overview["recipes"].sum() == len(recipes) and overview["recipes"].is_monotonic_decreasing
    assert overview.loc["PbSe", "recipes"] == (recipes["T2"] == "PbSe").sum()
    assert overview.loc["Cu", "failed_syntheses"] == (table["failed"] & (table["T2"] == "Cu")).sum() > 0
    sphere = training.shapes.index("sphere")
    assert overview.loc["PbSe", "sphere"] == ((recipes["T2"] == "PbSe") & (recipes["Y3"] == sphere)).sum()
    sized = recipes[(recipes["T2"] == "PbSe") & (recipes["Y1"] > 0)]["Y1"]
    assert overview.loc["PbSe", "median_size_nm"] == pytest.approx(sized.median())


def test_response_sweeps_one_value_and_predicts_as_predict(predictor):
    template = pbse(len(predictor.shapes))
    temperature = parse_vary(["Temperature2=100:250"], template.iloc[0])[0]
    curve = response(predictor, template, temperature, points=7)
    np.testing.assert_allclose(curve["Temperature2"], np.linspace(100, 250, 7))
    swept = pd.concat([template] * 7, ignore_index=True).assign(Temperature2=np.linspace(100, 250, 7))
    np.testing.assert_allclose(curve["size_nm"], predictor.predict(swept)["size_nm"], rtol=1e-6)
    time = parse_vary(["Time=1:64"], template.iloc[0])[0]  # a factor 64: the log scale
    np.testing.assert_allclose(response(predictor, template, time, points=7)["Time"], [1, 2, 4, 8, 16, 32, 64])


def test_series_measurements_are_the_recipes_that_differ_only_in_the_varied_value(training):
    rows = training.rows
    template = rows[(rows["ID"] == 1) & ~rows["failed"]].reset_index(drop=True)  # PbSe, a series over time
    found = series_measurements(training, template, parse_vary(["Time=1:60"], template.iloc[0])[0])
    same = rows[(series_keys(rows) == series_keys(template).iloc[0])
                & (rows[["Temperature1", "Temperature2", "Speed"]] == template[["Temperature1", "Temperature2",
                                                                                 "Speed"]].iloc[0]).all(axis=1)]
    assert len(found) >= 3 and sorted(found["ID"]) == sorted(same["ID"])
    assert sorted(found["Time"]) == sorted(same["Time"])
    # the substances in another slot order: the same series
    order = [1, 0, 2, 3, 4, 5]
    shuffled = template.copy()
    shuffled[list(AMOUNT_COLUMNS[:6])] = template[[AMOUNT_COLUMNS[k] for k in order]].to_numpy()
    shuffled[list(NAME_COLUMNS[:6])] = template[[NAME_COLUMNS[k] for k in order]].to_numpy()
    assert sorted(series_measurements(training, shuffled, parse_vary(["Time=1:60"], shuffled.iloc[0])[0])["ID"]) \
        == sorted(found["ID"])
    # one amount varied: the other amounts and every condition stay
    selenium = series_measurements(training, template, parse_vary(["Se=1:40"], template.iloc[0])[0])
    assert len(selenium) and (selenium["ID"] == 1).any()
    assert set(selenium["ID"]).isdisjoint(set(found["ID"]) - {1})  # another time is another series


def test_newest_finished_runs(size_run, shape_run, tmp_path):
    def copy(run: Path, name: str, finished: bool = True, **changes) -> Path:
        target = tmp_path / "runs" / name
        target.mkdir(parents=True)
        config = json.loads((run / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, **changes}))
        shutil.copy(run / "fold0.pt", target / "fold0.pt")
        if finished:
            shutil.copy(run / "metrics.json", target / "metrics.json")
        return target

    runs = tmp_path / "runs"
    assert newest_run(runs, "size") is None
    older = copy(size_run, "size-a")
    copy(size_run, "size-b", finished=False)  # no metrics.json: still training
    assert newest_run(runs, "size") == older
    newer = copy(size_run, "size-c")
    copy(shape_run, "shape-sizein", size_as_input=True)  # reads a measured size: not for recipes
    assert newest_run(runs, "size") == newer and newest_run(runs, "shape") is None
    recipe_only = copy(shape_run, "shape-recipe")
    copy(size_run, "lopo", split="product")  # leave-one-product-out: folds named by product, no fold<k>.pt
    (runs / "lopo" / "fold0.pt").rename(runs / "lopo" / "PbSe.pt")
    assert newest_run(runs, "shape") == recipe_only and newest_run(runs, "size") == newer


def test_cli_app_picks_runs_or_names_the_commands(size_run, shape_run, tmp_path, monkeypatch, capsys):
    assert main(["app", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "scripts/best_size.sh" in err and "scripts/best_cls.sh" in err and "Traceback" not in err
    assert main(["app", "--size-run", str(shape_run)]) == 2
    assert "--size-run is a shape run" in capsys.readouterr().err
    for name, run in (("size", size_run), ("shape", shape_run)):
        shutil.copytree(run, tmp_path / name)
    served = []
    monkeypatch.setattr("os.execve", lambda path, command, env: served.append((command, env)))
    main(["app", "--runs", str(tmp_path), "--port", "8600"])
    command, env = served[0]
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("nanocrystal/app.py")
    assert {"--server.address=localhost", "--server.port=8600", "--server.headless=true"} <= set(command)
    assert command[command.index("--"):] == ["--", "--size-run", str(tmp_path / "size"), "--shape-run",
                                             str(tmp_path / "shape")]
    assert str(ROOT) in env["PYTHONPATH"]


def test_size_interval_with_and_without_calibration():
    prediction = pd.DataFrame({"size_nm": [7.12], "size_std": [1.1], "size_lo": [np.nan], "size_hi": [np.nan]})
    words, band = size_interval(prediction)  # a size run without calibration: NaN interval
    assert words["size"].iloc[0] == "7.1 ± 1.1 nm (model spread)" and band == "model spread"
    assert words[["size_lo", "size_hi"]].iloc[0].tolist() == pytest.approx([6.02, 8.22])
    words, band = size_interval(prediction.assign(size_lo=5.2, size_hi=9.6))
    assert words["size"].iloc[0] == "7.1 nm (90 % interval 5.2–9.6 nm)" and band == "90 % interval"


# ---- the pages, in AppTest ---------------------------------------------------------------------------------------------

def test_predict_page_shows_the_size_of_the_recipe_entered(predictor, size_run, shape_run):
    at = app_page("Predict", size_run, shape_run)
    no_failure(at)
    assert not at.error
    expected = predictor.predict(pbse(len(predictor.shapes), temperature2=180))
    at.number_input(key="predict-0-Temperature2").set_value(180.0).run()
    words, _ = size_interval(expected)
    assert [s.value for s in at.subheader] == [words["size"].iloc[0]]
    assert any("Within the model's experience" in s.value or "Outside" in s.value for s in [*at.success, *at.warning])
    (nearest,) = [d for d in at.dataframe if "measured_shape" in d.value.columns]  # beside the new-substance tables
    assert len(nearest.value) == 5  # the nearest training recipes


def test_predict_page_names_an_unknown_substance_inline(size_run, shape_run):
    at = app_page("Predict", size_run, shape_run)
    type_name(at, "predict-0-substance-1", "Unobtainium")
    at.run()
    no_failure(at)
    assert [e.value for e in at.error] == ["- substance 2: no descriptor for 'Unobtainium', so the models cannot read "
                                           "it; pick a name from the list (type to search)"]
    assert not at.subheader  # no prediction
    type_name(at, "predict-0-substance-1", "Unobtainium")
    at.checkbox(key="predict-allow-unknown").check().run()
    assert at.subheader[0].value.endswith("nm)") and "no descriptor (used as zeros): Unobtainium" in at.warning[0].value


def test_predict_page_bad_values_and_files_get_messages(size_run, shape_run):
    at = app_page("Predict", size_run, shape_run)
    at.number_input(key="predict-0-amount-1").set_value(0.0).run()
    no_failure(at)
    assert [e.value for e in at.error] == ["- substance 2: substance 'Se' has amount 0"]
    text = EXAMPLE.read_text().replace("PbCl2", "Unobtainium")
    at.get("file_uploader")[0].upload("mine.csv", text.encode(), "text/csv")
    at.run()
    assert [e.value for e in at.error][-1].startswith("- row 4, substance 1: no descriptor for 'Unobtainium'")
    at.get("file_uploader")[0].upload("mine.csv", b"ID,T2,Time\n1,PbSe,soon\n", "text/csv")
    at.run()
    no_failure(at)
    assert "mine.csv:2:Time: non-numeric value 'soon'" in at.error[-1].value
    at.get("file_uploader")[0].upload("mine.csv", EXAMPLE.read_bytes(), "text/csv")
    at.run()
    no_failure(at)
    assert len(at.dataframe[-1].value) == 6 and at.get("download_button")


def test_design_page_returns_candidates(size_run, shape_run):
    at = app_page("Design", size_run, shape_run)
    no_failure(at)
    at.number_input(key="design-trials").set_value(64)
    at.number_input(key="design-top").set_value(3)
    at.button(key="design-search").click().run()
    no_failure(at)
    candidates = at.dataframe[0].value
    assert len(candidates) == 3 and candidates["size"].str.contains(r"nm \(90 % interval .*–.* nm\)").all()
    assert candidates["p_within"].between(0, 1).all()  # the tiny runs are calibrated (tiny preset)
    assert candidates["Reaction temperature (°C)"].between(100, 200).all()
    assert candidates["Time (min)"].between(1.25, 20).all()
    assert at.get("progress") and at.get("download_button")


def test_a_size_run_without_calibration_shows_the_model_spread_and_cannot_design(uncalibrated_size_run):
    at = app_page("Predict", uncalibrated_size_run, None)
    no_failure(at)
    assert at.subheader[0].value.endswith("nm (model spread)")
    at = app_page("Design", uncalibrated_size_run, None)
    no_failure(at)
    assert at.button(key="design-search").disabled and "has no calibration" in at.warning[0].value


def test_explore_page_draws_the_response_and_checks_the_range(size_run, shape_run):
    at = app_page("Explore", size_run, shape_run)
    no_failure(at)
    assert not at.error and len(at.get("vega_lite_chart")) == 2  # size (band, series points), shapes
    assert "5 measured training recipe(s)" in at.caption[-1].value
    at.number_input(key="explore-Time-5-low").set_value(30.0).run()  # from 30 to 20 min
    no_failure(at)
    assert at.error[0].value.startswith("- range of Time (min): need 0 <= LOW < HIGH")


def test_data_page(size_run, shape_run):
    at = app_page("Data", size_run, shape_run)
    no_failure(at)
    assert len(at.dataframe[0].value) == 350 and len(at.get("vega_lite_chart")) == 2
