"""Substances: the curated file, the descriptor providers, imputation, and new substances in predict."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rdkit.Chem.rdMolDescriptors import CalcMolFormula

from nanocrystal import predict as predict_module
from nanocrystal.cli import main
from nanocrystal.config import COMPUTED_PROVIDERS, ROOT, Config, ConfigError
from nanocrystal.predict import NEW_SUFFIX, Predictor, extend_run, load_predictor, predict_recipes, read_recipes
from nanocrystal.recipes import NAME_COLUMNS, PRODUCT_NAME
from nanocrystal.substances import (MAX_Z, RDKIT_WIDTH, SUBSTANCES_FILE, WEIGHT_VARIABLE, Imputer, SubstanceError,
                                    composition_vector, element_fractions, molecule, package_substances,
                                    provider_vectors, read_substances, rdkit_vector, rename_substance, run_store,
                                    unimol_vectors)

EXAMPLES = ROOT / "examples" / "recipes.csv"
NEW_LIGAND = ("PEA", "organic", "", "NCCc1ccccc1")  # 2-phenylethylamine: in no recipe and not in the table


def test_every_smiles_and_formula_of_the_package_file_reads_and_they_agree(dataset):
    substances = read_substances(SUBSTANCES_FILE)  # raises on any SMILES RDKit cannot read or formula pymatgen cannot
    assert substances["name"].is_unique and len(substances) > 800
    with_smiles = substances[substances["smiles"] != ""]
    assert len(with_smiles) > 350
    for row in with_smiles.itertuples():
        mol = molecule(row.smiles)
        assert mol is not None, row.name
        # the formula column was written from the SMILES: the same elements in the same amounts
        assert element_fractions(row.formula) == pytest.approx(element_fractions(
            CalcMolFormula(mol).rstrip("+-")), rel=1e-9), row.name
    # written for the dataset's own names: every entry is a reagent or a product of the recipes or failed syntheses
    used = set(dataset.recipes[list(NAME_COLUMNS)].to_numpy().ravel()) | set(dataset.recipes[PRODUCT_NAME])
    used |= set(dataset.failures[list(NAME_COLUMNS)].to_numpy().ravel()) | set(dataset.failures[PRODUCT_NAME])
    assert set(substances["name"]) <= used
    frequent = pd.Series(dataset.recipes[list(NAME_COLUMNS)].to_numpy().ravel()).value_counts().index[1:31]
    assert set(frequent) <= set(substances["name"])  # the 30 most frequent reagents (after PlaceHolder) are covered


def test_a_bad_substances_file_lists_every_problem(tmp_path):
    path = tmp_path / "new.csv"
    path.write_text("name,kind,formula,smiles\nPEA,organic,,NCCc1ccccc1\nX,organic,,C1CC\nY,,,\nPEA,,Pb,\n"
                    "Z,mineral,Qq2,\n")
    with pytest.raises(SubstanceError) as raised:
        read_substances(path)
    assert raised.value.problems == [
        f"{path}:3:smiles: RDKit cannot read 'C1CC'",
        f"{path}:4:formula: 'Y' needs a formula or a SMILES",
        f"{path}:5:name: 'PEA' is listed twice",
        f"{path}:6:kind: 'mineral': choose from inorganic, organic, metal-organic, polymer or leave it empty",
        f"{path}:6:formula: 'Qq2' is not a chemical formula"]


def test_the_table_is_never_mixed_with_computed_providers():
    assert Config(descriptors="composition+rdkit").descriptors == "composition+rdkit"
    for spec, words in (("table+rdkit", "cannot be mixed"), ("rdkit+unimol+table", "cannot be mixed"),
                        ("morgan", "choose table"), ("rdkit+rdkit", "each once")):
        with pytest.raises(ConfigError) as raised:
            Config.from_dict({"descriptors": spec})
        assert str(raised.value).startswith(f"--descriptors {spec!r}:") and words in str(raised.value)
    with pytest.raises(ConfigError, match="--augmented needs --descriptors table"):
        Config.from_dict({"descriptors": "rdkit", "augmented": "runs/aug"})


def test_composition_and_rdkit_vectors():
    lead_selenide = composition_vector("PbSe")
    assert lead_selenide[82 - 1] == lead_selenide[34 - 1] == 0.5 and lead_selenide[:MAX_Z].sum() == pytest.approx(1)
    assert not np.array_equal(lead_selenide, composition_vector("PbS"))
    # the same molecule written two ways gives one vector; another molecule another
    np.testing.assert_allclose(rdkit_vector("OCC"), rdkit_vector("C(O)C"), atol=1e-12)
    assert not np.array_equal(rdkit_vector("CCO"), rdkit_vector("CCN"))
    substances = pd.DataFrame({"name": ["Se", "OLA"], "kind": "", "full_name": "", "formula": ["Se", "C18H37N"],
                               "smiles": ["", "CCCCCCCC/C=C\\CCCCCCCCN"]})
    vectors = provider_vectors("composition+rdkit", substances)
    width = len(composition_vector("Se"))
    assert vectors.shape == (2, width + RDKIT_WIDTH)
    assert not vectors[0, width:].any() and vectors[1, width:].any()  # no SMILES: an empty rdkit block


def test_imputer_is_chosen_by_leave_one_out_error():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 6))
    linear = Imputer.select(features, features @ rng.normal(size=(6, 4)))
    assert linear.choice.startswith("ridge") and linear.scores["loo_r2"].max() > 0.99
    assert list(linear.scores.columns) == ["model", "loo_mse", "loo_r2"] and len(linear.scores) == 10
    # targets that only a neighbour knows (a lookup of cluster centres): the neighbours win
    centres = rng.normal(size=(12, 6)) * 10
    cluster = rng.integers(0, 12, 240)
    lookup = Imputer.select(centres[cluster] + rng.normal(size=(240, 6)) * 0.1, rng.normal(size=(12, 5))[cluster])
    assert lookup.choice.startswith("knn")


@pytest.fixture(scope="module")
def quick_shifts():
    """The substance shifts of the tiny size run from a few substances and rows (the real count takes a minute)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict_module, "SHIFT_SUBSTANCES", 3)
        patch.setattr(predict_module, "SHIFT_ROWS", 10)
        yield


def _recipes_with_new_ligand(tmp_path: Path) -> tuple[Path, Path]:
    recipes = pd.read_csv(EXAMPLES, dtype=str, keep_default_na=False)
    recipes.loc[1, "D2"] = NEW_LIGAND[0]  # recipe 2's oleylamine becomes a ligand absent from the table
    recipes_path, substances_path = tmp_path / "recipes.csv", tmp_path / "substances.csv"
    recipes.to_csv(recipes_path, index=False)
    substances_path.write_text("name,kind,formula,smiles\n" + ",".join(NEW_LIGAND) + "\n")
    return recipes_path, substances_path


def test_predict_a_reagent_given_by_smiles(size_run, descriptors, tmp_path, capsys, quick_shifts):
    assert NEW_LIGAND[0] not in descriptors
    recipes, substances = _recipes_with_new_ligand(tmp_path)
    assert main(["predict", "--size-run", str(size_run), str(recipes)]) == 2
    assert "substance 'PEA' has no descriptor (give its formula or SMILES with --substances FILE" in \
        capsys.readouterr().err
    out = tmp_path / "pred.csv"
    assert main(["predict", "--size-run", str(size_run), str(recipes), "--substances", str(substances),
                 "--out", str(out)]) == 0
    assert "PEA (new substance)" in capsys.readouterr().out
    written = pd.read_csv(out, keep_default_na=False)
    assert written["imputed"].tolist() == ["", "PEA", "", "", "", ""]
    assert (written["size_lo"] < written["size_nm"]).all() and (written["size_nm"] < written["size_hi"]).all()
    assert not written.loc[1, "in_domain"] and written.loc[1, "outside_training"].endswith("PEA (new substance)")
    assert (size_run / predict_module.SHIFTS_FILE).is_file()  # measured on training rows once, then cached


def test_design_searches_a_template_with_a_new_substance(size_run, tmp_path, capsys, quick_shifts):
    template = pd.read_csv(ROOT / "examples" / "template_pbse.csv", dtype=str, keep_default_na=False)
    column = next(c for c in NAME_COLUMNS if c in template and template.loc[0, c] == "OLA")
    template.loc[0, column] = NEW_LIGAND[0]
    template_path, substances = tmp_path / "template.csv", _recipes_with_new_ligand(tmp_path)[1]
    template.to_csv(template_path, index=False)
    out = tmp_path / "design.csv"
    args = ["design", "--size-run", str(size_run), "--template", str(template_path), "--target-size", "6",
            "--vary", "Time=1:30", "--trials", "32", "--top", "2", "--out", str(out)]
    assert main(args) == 2 and "substance 'PEA' has no descriptor" in capsys.readouterr().err
    assert main([*args, "--substances", str(substances)]) == 0
    written = pd.read_csv(out, keep_default_na=False)
    assert (written["imputed"] == "PEA").all() and (written["size_lo"] < written["size_hi"]).all()


def test_a_new_substance_widens_the_interval_by_its_shift(size_run, tmp_path, quick_shifts):
    predictor = load_predictor(size_run)
    recipes = read_recipes(_recipes_with_new_ligand(tmp_path)[0], predictor.shapes)
    extended = predictor.with_substances(recipes.table, read_substances(_recipes_with_new_ligand(tmp_path)[1]))
    assert extended.imputed == {"PEA"} and predictor.imputed == frozenset()  # the loaded predictor is unchanged
    widened = extended.predict(recipes.table)
    plain = Predictor(extended.size, None, extended.shapes).predict(recipes.table)  # same vectors, no widening
    shift = predict_module.shift_quantile(extended.size.shifts, 0.9)
    half = lambda frame: np.log(frame["size_hi"] / frame["size_lo"]).to_numpy() / 2  # noqa: E731
    assert shift > 0
    assert half(widened)[1] == pytest.approx(np.hypot(half(plain)[1], shift), rel=1e-6)
    rest = np.arange(len(recipes.table)) != 1
    np.testing.assert_allclose(half(widened)[rest], half(plain)[rest])
    np.testing.assert_allclose(widened["size_nm"], plain["size_nm"])
    assert not widened.loc[1, "seen_series"]  # a new substance makes a new series by construction


def test_extending_a_run_keeps_every_known_prediction(size_run, table, tmp_path):
    predictor = load_predictor(size_run)
    rows = table[(table[list(NAME_COLUMNS)] == "OLA").any(axis=1) & ~table["failed"]].head(30)
    before = predictor.predict(rows)["size_nm"].to_numpy()
    store = run_store("table", predictor.size.cfg.feats_path)
    new = "OLA" + NEW_SUFFIX
    renamed = rename_substance(rows, "OLA", new)
    sizes = {}
    for label, vector in (("zeros", np.zeros(store.dim, np.float32)), ("true", store.get("OLA"))):
        extended = Predictor(extend_run(predictor.size, {new: vector}), None, predictor.shapes)
        np.testing.assert_allclose(extended.predict(rows)["size_nm"], before, rtol=1e-6)  # known rows unchanged
        sizes[label] = extended.predict(renamed)["size_nm"].to_numpy()
    assert not np.allclose(sizes["zeros"], sizes["true"])  # the new substance's vector reaches the prediction
    np.testing.assert_allclose(predictor.predict(rows)["size_nm"], before)  # the loaded run itself is unchanged


def test_predict_records_substances_a_computed_run_lacks(tmp_path, quick_shifts):
    """A run on composition + rdkit vectors: trains, saves its vectors in the checkpoints, and predicts a new ligand
    from its SMILES with the run's own providers (nothing imputed from the table)."""
    from nanocrystal.config import resolve
    from nanocrystal.runs import read_checkpoint, run_experiment

    cfg = resolve("tiny", {"task": "size", "n_folds": 2, "folds": [0], "epochs": 1, "threads": 1,
                           "use_failures": False, "calibration_folds": 0, "descriptors": "composition+rdkit",
                           "save_path": str(tmp_path / "run")})
    run_dir = run_experiment(cfg)
    checkpoint = read_checkpoint(run_dir / "fold0.pt")
    vocabulary = checkpoint["encoder"]["vocabulary"]
    assert checkpoint["descriptor_vectors"].shape == (len(vocabulary), 644)
    assert set(package_substances()["name"]) <= set(vocabulary)
    predictor = load_predictor(run_dir)
    recipes_path, substances_path = _recipes_with_new_ligand(tmp_path)
    out = predict_recipes(predictor, read_recipes(recipes_path, predictor.shapes),
                          substances=read_substances(substances_path))
    assert out["imputed"].tolist() == ["", "PEA", "", "", "", ""] and out["size_nm"].gt(0).all()


def test_unimol_without_weights_names_the_variable(monkeypatch):
    monkeypatch.delenv(WEIGHT_VARIABLE, raising=False)
    with pytest.raises(SubstanceError) as raised:
        unimol_vectors(["CCO"])
    assert str(raised.value).startswith(f"--descriptors unimol: set {WEIGHT_VARIABLE} to a folder")
    assert "it is not set" in str(raised.value) and "\n" not in str(raised.value)
    assert "unimol" in COMPUTED_PROVIDERS


# unimol-tools pins numpy < 2.3 (the lock has a newer one), so it stays out of the lock: this test installs it
# without dependencies (with the few its import needs) into a folder of its own and runs it in a subprocess.
UNIMOL_PACKAGES = ("unimol-tools==0.1.6", "addict==2.4.0", "omegaconf==2.3.1", "hydra-core==1.3.8",
                   "antlr4-python3-runtime==4.9.3")
UNIMOL_TARGET = ROOT / ".venv" / "unimol-tools"
UNIMOL_SCRIPT = """
import sys
from pathlib import Path
import numpy as np
import torch
from unimol_tools.models import UniMolModel
from nanocrystal.substances import UNIMOL_WEIGHTS, provider_vectors
import pandas as pd

folder = Path(sys.argv[1])
tokens = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "C", "N", "O", "S", "H", "Cl", "Br", "P", "Se", "Cu"]
(folder / UNIMOL_WEIGHTS[1]).write_text("".join(f"{t}\\n" for t in tokens))
weights = folder / UNIMOL_WEIGHTS[0]
torch.save({}, weights)  # an empty checkpoint: the model keeps its random initialisation
torch.manual_seed(0)
model = UniMolModel(output_dim=1, data_type="molecule", remove_hs=False, pretrained_model_path=str(weights),
                    pretrained_dict_path=str(folder / UNIMOL_WEIGHTS[1]))
torch.save({"model": model.state_dict()}, weights)  # the molecule architecture, random weights
substances = pd.DataFrame({"name": ["OLA", "EtOH", "Cu(OAc)2", "Se"], "kind": "", "full_name": "",
                           "formula": ["", "", "", "Se"],
                           "smiles": ["CCCCCCCC/C=C\\\\CCCCCCCCN", "CCO", "[Cu+2].CC(=O)[O-].CC(=O)[O-]", ""]})
both = provider_vectors("rdkit+unimol", substances)  # UniMolRepr on the three SMILES; Se has none
np.savez(folder / "out.npz", both=both)
"""


@pytest.fixture(scope="module")
def unimol_path() -> Path:
    if not (UNIMOL_TARGET / "unimol_tools").is_dir():
        installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                                    str(UNIMOL_TARGET), *UNIMOL_PACKAGES], capture_output=True, text=True)
        if installed.returncode != 0:
            pytest.skip(f"unimol-tools could not be installed from the package registry: "
                        f"{installed.stderr.strip().splitlines()[-1:]}")
    return UNIMOL_TARGET


def test_unimol_vectors_come_from_the_real_unimol_repr(unimol_path, tmp_path):
    environment = {**os.environ, WEIGHT_VARIABLE: str(tmp_path),
                   "PYTHONPATH": os.pathsep.join([str(unimol_path), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", UNIMOL_SCRIPT, str(tmp_path)], env=environment, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(tmp_path / "out.npz") as out:
        both = out["both"]
    unimol = both[:, RDKIT_WIDTH:]
    assert both.shape == (4, RDKIT_WIDTH + 512) and np.isfinite(both).all()
    assert not np.allclose(unimol[0], unimol[1]) and not np.allclose(unimol[1], unimol[2])  # one vector per molecule
    assert (np.abs(unimol[:3]).sum(axis=1) > 0).all()
    assert not both[3].any()  # Se has no SMILES: both blocks empty
