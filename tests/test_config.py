"""The typed config loader: every field's type and range, one line per bad key, exit 2 and nothing written."""
from __future__ import annotations

import json

import pytest

from nanocrystal.cli import main, train_main
from nanocrystal.config import Config, ConfigError, field_values, resolve


def tiny_config(tmp_path, **changes) -> str:
    """A valid tiny config.json with some values replaced (as a user edits a run's config)."""
    values = json.loads(resolve("tiny", {"threads": 1}).to_json()) | changes
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    return str(path)


@pytest.mark.parametrize("key,value,message", [
    ("use_weak", "no", "use_weak: expected true or false, got 'no'"),  # not read as true
    ("object_name", "PbSe", "object_name: expected a list of str, got 'PbSe'"),  # not read letter by letter
    ("d_model", 16.5, "d_model: expected a whole number below 2^31, got 16.5"),
    ("lr", "0.002", "lr: expected a finite number, got '0.002'"),  # a string is never read as a number
    ("epochs", "1", "epochs: expected a whole number below 2^31, got '1'"),
    ("n_folds", "five", "n_folds: expected a whole number below 2^31, got 'five'"),
    ("folds", [0, 1.5], "folds: expected a list of int, got 1.5 in it"),
    ("lr", float("nan"), "lr: expected a finite number, got nan"),
    ("epochs", 0, "epochs: must be >= 1, got 0"),
    ("dropout", 1.0, "dropout: must be in [0, 1), got 1.0"),
    ("seed", -1, "seed: must be >= 0, got -1"),
    ("amount_scaling", "linear", "amount_scaling: must be one of 'log', 'robust', got 'linear'"),
    ("n_heads", 3, "n_heads: must divide d_model (16), got 3"),
    ("colour", "red", "colour: unknown key"),
])
def test_each_bad_value_is_named_by_file_and_key(tmp_path, key, value, message):
    path = tiny_config(tmp_path, **{key: value})
    with pytest.raises(ConfigError) as caught:
        Config.load(path)
    assert caught.value.problems == [f"{path}: {message}"]


def test_one_line_per_bad_key_and_nothing_written(tmp_path, capsys):
    """train.py --config with three bad values: exit 2, one line for each, no run folder, config.json or log.txt."""
    path = tiny_config(tmp_path, d_model=16.5, use_weak="no", lr="0.002")
    run = tmp_path / "run"
    assert train_main(["--config", path, "--save_path", str(run)]) == 2
    assert sorted(capsys.readouterr().err.splitlines()) == [
        f"{path}: d_model: expected a whole number below 2^31, got 16.5",
        f"{path}: lr: expected a finite number, got '0.002'",
        f"{path}: use_weak: expected true or false, got 'no'"]
    assert not run.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_flags_are_checked_like_the_file(capsys):
    assert train_main(["--preset", "tiny", "--lr", "inf", "--epochs", "0"]) == 2
    assert capsys.readouterr().err.splitlines() == ["--epochs: must be >= 1, got 0",
                                                    "--lr: expected a finite number, got inf"]
    assert train_main(["--preset", "huge"]) == 2
    assert capsys.readouterr().err.strip() == "--preset 'huge': choose from cpu, tiny, paper, new_series, new_product"


@pytest.mark.parametrize("text,message", [
    ("{", "not a JSON config"),
    ("[1, 2]", "expected a JSON object of settings, got list"),
])
def test_a_config_file_that_is_not_a_settings_object(tmp_path, capsys, text, message):
    path = tmp_path / "config.json"
    path.write_text(text)
    assert train_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"{path}: {message}")


def test_ints_of_float_fields_are_floats_and_valid_values_load(tmp_path):
    cfg = Config.load(tiny_config(tmp_path, lr=1, object_name=["PbSe"], use_weak=False))
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.object_name == ["PbSe"] and cfg.use_weak is False


def test_predict_names_the_bad_key_of_a_run_folder(size_run, tmp_path, capsys):
    """A run folder whose config.json is bad: predict exits 2 with one line naming the file and the key."""
    run = tmp_path / "run"
    run.mkdir()
    values = json.loads((size_run / "config.json").read_text()) | {"n_folds": "five"}
    (run / "config.json").write_text(json.dumps(values))
    assert main(["predict", "--size-run", str(run), "recipes.csv"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{run / 'config.json'}: n_folds: expected a whole number below 2^31, got 'five'"]


def test_field_values_read_json_and_name_every_bad_item():
    assert field_values(["pack_tokens=false", "d_model=64", "device=\"cpu\""]) == {
        "pack_tokens": False, "d_model": 64, "device": "cpu"}
    with pytest.raises(ConfigError) as error:
        field_values(["epochs", "lr=fast", "d_model=8"])
    assert error.value.problems == ["--set epochs: not FIELD=VALUE with a JSON value",
                                    "--set lr=fast: not FIELD=VALUE with a JSON value"]
