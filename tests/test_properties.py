"""Property-based (hypothesis, derandomized): no generated recipe table, config or descriptor pickle gets an uncaught
exception out of `validate`, `predict`, `train.py --config` or the descriptor loader; each is accepted or refused with
exit 2 and lines that name the file."""
from __future__ import annotations

import json
import pickle
import tempfile
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from nanocrystal.cli import main, train_main
from nanocrystal.config import Config, resolve
from nanocrystal.descriptors import DescriptorError, load_descriptors
from nanocrystal.predict import load_predictor
from nanocrystal.recipes import REQUIRED_COLUMNS

PROPERTY = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])

CELLS = st.one_of(
    st.sampled_from(["", "nan", "inf", "-inf", "1e308", "-1e400", "3.4e38", "3.5e38", "1e-400", "0", "-1", " 7 ",
                     "1,5", "0x10", "?", "PbO", "OA", "PlaceHolder", "12", "2000"]),
    st.floats().map(repr),
    st.integers(-10 ** 30, 10 ** 30).map(str),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),
)


@pytest.fixture(scope="module")
def small(recipes_path) -> pd.DataFrame:
    return pd.read_csv(recipes_path, dtype=str, keep_default_na=False, nrows=5)


@pytest.fixture(scope="module")
def size_predictor(size_run):
    return load_predictor(size_run)


def _errors_name(path: Path, err: str) -> bool:
    return all(line.startswith(str(path)) for line in err.splitlines())


@settings(PROPERTY, max_examples=25)
@given(edits=st.lists(st.tuples(st.integers(0, 4), st.sampled_from(REQUIRED_COLUMNS), CELLS), max_size=5),
       dropped=st.one_of(st.none(), st.sampled_from(REQUIRED_COLUMNS)))
def test_no_recipe_table_escapes_validate_or_predict(small, size_predictor, capsys, edits, dropped):
    frame = small.copy()
    for row, column, value in edits:
        frame.loc[row, column] = value
    if dropped:
        frame = frame.drop(columns=dropped)
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        path, out = Path(folder) / "recipes.csv", Path(folder) / "predicted.csv"
        frame.to_csv(path, index=False)
        patch.setattr("nanocrystal.predict.load_predictor", lambda *runs: size_predictor)  # loaded once, above
        validated = main(["validate", str(path)])
        err = capsys.readouterr().err
        assert validated in (0, 2) and _errors_name(path, err), err
        predicted = main(["predict", "--size-run", "run", str(path), "--allow-unknown", "--out", str(out)])
        err = capsys.readouterr().err
        assert predicted in (0, 2) and _errors_name(path, err), err
        if predicted == 0:  # a table that passes gets finite predictions, however far out of domain
            written = pd.read_csv(out)
            assert np.isfinite(written[["size_nm", "size_std", "domain_distance"]].to_numpy()).all()


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
                    max_leaves=4)
HINTS = typing.get_type_hints(Config)
PLAUSIBLE = {int: st.integers(0, 8), float: st.floats(0, 1), bool: st.booleans(),
             str: st.sampled_from(["size", "shape", "grouped", "log", "robust", "mlp", "cpu", "auto", ""]),
             list[str]: st.lists(st.sampled_from(["PbSe", "lgbm", "et", "rf"]), max_size=2),
             list[int]: st.lists(st.integers(0, 4), max_size=2)}
# a value of the key's own type (often valid) or any JSON value (often not)
EDIT = st.sampled_from([*HINTS, "lgbm_blend", "colour"]).flatmap(
    lambda key: st.tuples(st.just(key), PLAUSIBLE[HINTS.get(key, float)] | JSON))


@settings(PROPERTY, max_examples=150)
@given(edits=st.lists(EDIT, max_size=4).map(dict), garbage=st.none() | st.binary(max_size=40))
def test_no_config_escapes_train_config(capsys, edits, garbage):
    base = json.loads(resolve("tiny").to_json())
    started = []
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        path, run = Path(folder) / "config.json", Path(folder) / "run"
        path.write_bytes(garbage if garbage is not None else json.dumps(base | edits).encode())
        # a valid config stops here, before training: the property is about reading it
        patch.setattr("nanocrystal.runs.run_experiment", lambda cfg, command: started.append(cfg) or run)
        code = train_main(["--config", str(path), "--save_path", str(run)])
        event(f"exit {code}")
        err = capsys.readouterr().err
        assert code in (0, 2) and not run.exists()
        if code == 2:
            assert not started and err and _errors_name(path, err), err
        else:
            (cfg,) = started
            assert cfg.save_path == str(run)
            for key, value in edits.items():
                if key not in ("save_path", "resume", "lgbm_blend"):
                    assert getattr(cfg, key) == value and type(getattr(cfg, key)) in (type(value), float)


NUMERIC = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.uint8, np.bool_, np.complex64])
VECTORS = (arrays(NUMERIC, array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4))
           | arrays(np.dtype("U3"), st.integers(0, 3))
           | st.lists(st.floats() | st.text(max_size=3), max_size=3).map(lambda items: np.array(items, dtype=object)))
CONTENT = st.dictionaries(st.text(max_size=5) | st.integers(), VECTORS | st.floats() | st.none() | st.text(max_size=3),
                          max_size=4) | VECTORS | st.lists(st.floats(), max_size=3)


@settings(PROPERTY, max_examples=300)
@given(content=CONTENT, protocol=st.integers(0, pickle.HIGHEST_PROTOCOL),
       damage=st.one_of(st.none(), st.tuples(st.integers(0, 10 ** 6), st.integers(-1, 255))))
def test_no_descriptor_pickle_escapes_the_loader(content, protocol, damage):
    data = bytearray(pickle.dumps(content, protocol=protocol))
    if damage is not None:  # cut at a position, or change one byte there
        position, byte = damage[0] % len(data), damage[1]
        data = data[:position] if byte < 0 else data[:position] + bytes([byte]) + data[position + 1:]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "feats.pkl"
        path.write_bytes(bytes(data))
        try:
            store = load_descriptors(path)
        except DescriptorError as error:
            assert str(error).startswith(str(path)) and "\n" not in str(error)
            return
    vectors = list(store.vectors.values())
    assert vectors and all(v.dtype == np.float32 and v.ndim == 1 and len(v) == store.dim for v in vectors)
    assert all(np.isfinite(v).all() for v in vectors)
