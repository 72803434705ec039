"""Substances as vectors: the descriptor providers behind one lookup, and imputation into the table's space.

A run records its providers in `Config.descriptors`; `run_store` turns that into the `DescriptorStore` that encode
(the transformer's tokens) and features (the trees) read in training, and predict reads the same vectors (the table,
or the computed vectors each fold checkpoint keeps), so none of them picks a provider of its own:

    table        the upstream Uni-Mol table (feats/*.pkl, 512 values per name); the default
    composition  element fractions and element-property statistics of a formula (pymatgen-core)
    rdkit        a Morgan fingerprint and a few descriptors of a SMILES (RDKit)
    unimol       unimol-tools' UniMolRepr of a SMILES, with weights from the folder UNIMOL_WEIGHT_DIR

Computed providers join with `+` (`composition+rdkit`): a substance's vector is their blocks side by side, zeros
where a provider cannot describe it (rdkit for a substance without a SMILES). The table is never mixed with them:
its vectors came from unimol-tools' `mof` model on crystal structures, which unimol-tools no longer ships, so no
computed block shares its space.

The computed providers describe the substances of `substances.csv` (this package's own curation: name, kind,
full_name, formula, smiles) and of any file in the same columns given to predict (`--substances`). For a run on the
table, a substance the table lacks gets an imputed vector: a regression from its composition and RDKit features to
the 512 values, fitted on the table's names (`Imputer`, chosen by leave-one-out error).
"""
from __future__ import annotations

import functools
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import TABLE, parse_providers
from .descriptors import INTERMEDIATE_SEPARATOR, DescriptorStore, load_descriptors
from .errors import InputError
from .recipes import EMPTY_NAME, NAME_COLUMNS

SUBSTANCES_FILE = Path(__file__).with_name("substances.csv")
SUBSTANCE_COLUMNS = ("name", "kind", "formula", "smiles")  # full_name is optional
KINDS = ("inorganic", "organic", "metal-organic", "polymer", "")
IMPUTATION_PROVIDERS = "composition+rdkit"  # the features the table's vectors are imputed from
WEIGHT_VARIABLE = "UNIMOL_WEIGHT_DIR"
UNIMOL_WEIGHTS = ("mol_pre_all_h_220816.pt", "mol.dict.txt")  # unimol-tools' molecule model, hydrogens kept

MAX_Z = 94  # H..Pu: every element of the data's substances
# element properties and the scale that brings each near 1 (fixed, so a vector never depends on the other substances)
ELEMENT_PROPERTIES = (("Z", 100.0), ("X", 4.0), ("atomic_radius", 3.0), ("row", 7.0), ("group", 18.0),
                      ("atomic_mass", 250.0), ("mendeleev_no", 100.0))
MORGAN_BITS, MORGAN_RADIUS = 512, 2
# (RDKit descriptor, scale): size, polarity, flexibility, rings, charge separation of salts
RDKIT_DESCRIPTORS = (("MolWt", 500.0), ("MolLogP", 10.0), ("TPSA", 100.0), ("NumHDonors", 5.0),
                     ("NumHAcceptors", 10.0), ("NumRotatableBonds", 20.0), ("HeavyAtomCount", 50.0),
                     ("RingCount", 5.0), ("NumAromaticRings", 5.0), ("FractionCSP3", 1.0))
RDKIT_WIDTH = MORGAN_BITS + len(RDKIT_DESCRIPTORS)
UNIMOL_WIDTH = 512  # the CLS representation of unimol-tools' molecule model


class SubstanceError(InputError, ValueError):
    """Every problem found, one line each (`file:row:column: message`, or the flag)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# ---- the run's providers -------------------------------------------------------------------------------------------

def is_table(spec: str) -> bool:
    return parse_providers(spec) == (TABLE,)


def run_store(descriptors: str, feats_path: str | Path) -> DescriptorStore:
    """The store of a run's providers: the table, or the computed vectors of every substance of substances.csv."""
    if is_table(descriptors):
        return load_descriptors(feats_path)
    substances = package_substances()
    return DescriptorStore(dict(zip(substances["name"], provider_vectors(descriptors, substances))))


# ---- the substances file -------------------------------------------------------------------------------------------

def read_substances(path: str | Path) -> pd.DataFrame:
    """A substances CSV (name, kind, formula, smiles; full_name optional), every SMILES parsed by RDKit and every
    formula by pymatgen. SubstanceError lists each problem as `file:row:column: message` (header = row 1)."""
    path = Path(path)
    if not path.is_file():
        raise SubstanceError([f"{path}:-:-: no such file"])
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise SubstanceError([f"{path}:-:-: not a readable CSV ({type(error).__name__})"]) from None
    missing = [c for c in ("name", "formula", "smiles") if c not in frame.columns]
    if missing:
        raise SubstanceError([f"{path}:1:-: missing column(s) {', '.join(missing)} (columns: "
                              f"{', '.join(SUBSTANCE_COLUMNS)}, full_name optional)"])
    frame = frame.assign(**{c: frame[c].str.strip() for c in ("name", "formula", "smiles")})
    if "kind" not in frame.columns:
        frame["kind"] = ""
    if "full_name" not in frame.columns:
        frame["full_name"] = ""
    problems = []
    seen = set()
    for position, row in enumerate(frame.itertuples(index=False)):
        where = f"{path}:{position + 2}"
        if not row.name or row.name == EMPTY_NAME or INTERMEDIATE_SEPARATOR in row.name:
            problems.append(f"{where}:name: {row.name!r} cannot name a substance")
        elif row.name in seen:
            problems.append(f"{where}:name: {row.name!r} is listed twice")
        seen.add(row.name)
        if row.kind not in KINDS:
            problems.append(f"{where}:kind: {row.kind!r}: choose from {', '.join(k for k in KINDS if k)} or leave it "
                            "empty")
        if not row.formula and not row.smiles:
            problems.append(f"{where}:formula: {row.name!r} needs a formula or a SMILES")
        if row.smiles and molecule(row.smiles) is None:
            problems.append(f"{where}:smiles: RDKit cannot read {row.smiles!r}")
        if row.formula and element_fractions(row.formula) is None:
            problems.append(f"{where}:formula: {row.formula!r} is not a chemical formula")
    if problems:
        raise SubstanceError(problems)
    return frame[["name", "kind", "full_name", "formula", "smiles"]].reset_index(drop=True)


@functools.lru_cache(maxsize=1)
def package_substances() -> pd.DataFrame:
    return read_substances(SUBSTANCES_FILE)


def merged_substances(extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """The package's substances, with `extra`'s rows replacing those of the same name."""
    own = package_substances()
    if extra is None or extra.empty:
        return own
    return pd.concat([own[~own["name"].isin(extra["name"])], extra], ignore_index=True)


# ---- providers -----------------------------------------------------------------------------------------------------

def molecule(smiles: str):
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # a bad SMILES is reported by the caller, in one line
    return Chem.MolFromSmiles(smiles)


def element_fractions(formula: str) -> dict[int, float] | None:
    """Atomic number -> mole fraction of a formula (pymatgen), or None if it is none."""
    from pymatgen.core import Composition, Element

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            amounts = Composition(formula).fractional_composition.get_el_amt_dict()
            fractions = {Element(symbol).Z: float(amount) for symbol, amount in amounts.items()}
    except Exception:  # pymatgen raises ValueError, KeyError or its own errors for what is no formula
        return None
    if not fractions or max(fractions) > MAX_Z:
        return None
    return fractions


@functools.lru_cache(maxsize=1)
def _element_table() -> np.ndarray:
    """(MAX_Z + 1, properties): each element's properties divided by their scale, 0 where pymatgen has none."""
    from pymatgen.core import Element

    table = np.zeros((MAX_Z + 1, len(ELEMENT_PROPERTIES)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for properties it lacks (noble gases' X)
        for z in range(1, MAX_Z + 1):
            element = Element.from_Z(z)
            for k, (name, scale) in enumerate(ELEMENT_PROPERTIES):
                value = getattr(element, name, None)
                table[z, k] = float(value) / scale if value is not None and np.isfinite(float(value)) else 0.0
    return table


@functools.lru_cache(maxsize=None)
def formula_atoms(formula: str) -> dict[str, float]:
    """Atoms per formula unit by element symbol (pymatgen); {} for what is no formula."""
    from pymatgen.core import Composition

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {str(symbol): float(n) for symbol, n in Composition(formula).get_el_amt_dict().items()}
    except Exception:  # as element_fractions
        return {}


@functools.lru_cache(maxsize=None)
def electronegativity(symbol: str) -> float:
    from pymatgen.core import Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # noble gases have none: nan
        return float(Element(symbol).X)


def chemistry_of(substances: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Name -> (formula, kind) of a substances table: what the trees' chemistry columns read
    (features.chemistry_columns). A SMILES-only row gets its SMILES' formula."""
    return {row.name: (formula_of(row), row.kind) for row in substances.itertuples(index=False)}


@functools.lru_cache(maxsize=1)
def package_chemistry() -> dict[str, tuple[str, str]]:
    return chemistry_of(package_substances())


def composition_vector(formula: str) -> np.ndarray:
    """Element fractions (H..Pu), then the fraction-weighted mean, standard deviation, minimum and maximum of each
    element property."""
    fractions = element_fractions(formula)
    vector = np.zeros(MAX_Z)
    z = np.array(list(fractions))
    weights = np.array(list(fractions.values()))
    vector[z - 1] = weights
    values = _element_table()[z]
    mean = weights @ values
    std = np.sqrt(np.maximum(weights @ (values - mean) ** 2, 0.0))
    return np.concatenate([vector, mean, std, values.min(0), values.max(0)])


def rdkit_vector(smiles: str) -> np.ndarray:
    """Morgan fingerprint bits (radius 2) and scaled RDKit descriptors of the molecule (all its fragments)."""
    from rdkit.Chem import Descriptors, rdFingerprintGenerator

    mol = molecule(smiles)
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)
    bits = generator.GetFingerprintAsNumPy(mol).astype(np.float64)
    described = [getattr(Descriptors, name)(mol) / scale for name, scale in RDKIT_DESCRIPTORS]
    return np.concatenate([bits, np.nan_to_num(np.array(described, np.float64))])


def formula_of(row) -> str:
    """The row's formula, or its SMILES' (RDKit, hydrogens counted) when it gives none."""
    if row.formula:
        return row.formula
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    return re.sub(r"[+-]\d*$", "", CalcMolFormula(molecule(row.smiles)))  # a net charge is no element


def unimol_vectors(smiles: list[str]) -> np.ndarray:
    """(len(smiles), 512): unimol-tools' UniMolRepr (CLS representation) with the molecule weights of the folder
    UNIMOL_WEIGHT_DIR; nothing is downloaded."""
    folder = os.environ.get(WEIGHT_VARIABLE, "")
    missing = [f for f in UNIMOL_WEIGHTS if not (Path(folder) / f).is_file()] if folder else list(UNIMOL_WEIGHTS)
    if missing:
        raise SubstanceError([f"--descriptors unimol: set {WEIGHT_VARIABLE} to a folder holding the Uni-Mol "
                              f"molecule weights ({', '.join(UNIMOL_WEIGHTS)}); "
                              + (f"{folder} lacks {', '.join(missing)}" if folder else "it is not set")
                              + " (model hubs are not reachable: nothing is downloaded)"])
    try:
        from unimol_tools import UniMolRepr
    except ImportError:
        raise SubstanceError(["--descriptors unimol: unimol-tools is not installed (pip install --no-deps "
                              "unimol-tools addict omegaconf hydra-core; see docs/substances.md)"]) from None
    model = UniMolRepr(data_type="molecule", remove_hs=False, use_cuda=False, batch_size=16,
                       pretrained_model_path=str(Path(folder) / UNIMOL_WEIGHTS[0]),
                       pretrained_dict_path=str(Path(folder) / UNIMOL_WEIGHTS[1]))
    return np.asarray(model.get_repr(list(smiles), return_tensor=True), np.float64)


def provider_vectors(descriptors: str, substances: pd.DataFrame) -> np.ndarray:
    """(substances, width): each provider's block side by side; zeros where a provider cannot describe a row
    (rdkit and unimol need a SMILES; composition a formula, or a SMILES to derive it from)."""
    blocks = []
    has_smiles = (substances["smiles"] != "").to_numpy()
    for provider in parse_providers(descriptors):
        if provider == "composition":
            blocks.append(np.stack([composition_vector(formula_of(row)) for row in substances.itertuples()]))
            continue
        block = np.zeros((len(substances), RDKIT_WIDTH if provider == "rdkit" else UNIMOL_WIDTH))
        smiles = substances.loc[has_smiles, "smiles"].tolist()
        if smiles:
            block[has_smiles] = (np.stack([rdkit_vector(s) for s in smiles]) if provider == "rdkit"
                                 else unimol_vectors(smiles))
        blocks.append(block)
    return np.concatenate(blocks, axis=1).astype(np.float32)


# ---- imputation into the table's space -----------------------------------------------------------------------------

RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
NEIGHBOURS = (1, 3, 5, 10, 20)


@dataclass(frozen=True)
class Imputer:
    """A regression from composition + RDKit features to the table's vector, fitted on the table's names that
    substances.csv describes. `select` chooses among ridge regressions (on standardised features) and distance-weighted
    k nearest neighbours by their leave-one-out mean squared error over those names and keeps every candidate's
    leave-one-out error and R² (1 - error / the error of the names' mean vector) in `scores`."""
    model: object
    choice: str
    scores: pd.DataFrame

    @classmethod
    def select(cls, features: np.ndarray, targets: np.ndarray) -> "Imputer":
        from sklearn.linear_model import RidgeCV
        from sklearn.metrics.pairwise import euclidean_distances
        from sklearn.preprocessing import StandardScaler

        features, targets = np.asarray(features, np.float64), np.asarray(targets, np.float64)
        total = float(((targets - targets.mean(0)) ** 2).mean())
        scaled = StandardScaler().fit_transform(features)
        # RidgeCV's efficient leave-one-out (cv=None): each name's error from the fit without it, for every alpha
        ridge = RidgeCV(alphas=RIDGE_ALPHAS, store_cv_results=True).fit(scaled, targets)
        rows = [(f"ridge alpha={alpha:g}", float(ridge.cv_results_[..., k].mean()))
                for k, alpha in enumerate(RIDGE_ALPHAS)]
        distances = euclidean_distances(scaled)
        np.fill_diagonal(distances, np.inf)  # a name's leave-one-out neighbours are the other names
        order = np.argsort(distances, axis=1)
        for k in NEIGHBOURS:
            near = order[:, :k]
            weights = 1.0 / np.maximum(np.take_along_axis(distances, near, axis=1), 1e-9)
            predicted = np.einsum("nk,nkd->nd", weights / weights.sum(1, keepdims=True), targets[near])
            rows.append((f"knn k={k}", float(((predicted - targets) ** 2).mean())))
        scores = pd.DataFrame(rows, columns=["model", "loo_mse"])
        scores["loo_r2"] = 1.0 - scores["loo_mse"] / total
        return cls.fit(features, targets, scores.loc[scores["loo_mse"].idxmin(), "model"], scores)

    @classmethod
    def fit(cls, features: np.ndarray, targets: np.ndarray, choice: str, scores: pd.DataFrame) -> "Imputer":
        """The model `choice` ('ridge alpha=A' or 'knn k=K') fitted on these names."""
        from sklearn.linear_model import Ridge
        from sklearn.neighbors import KNeighborsRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        kind, value = choice.split(" ")
        value = float(value.split("=")[1])
        estimator = Ridge(alpha=value) if kind == "ridge" else KNeighborsRegressor(int(value), weights="distance")
        model = make_pipeline(StandardScaler(), estimator).fit(np.asarray(features, np.float64),
                                                                np.asarray(targets, np.float64))
        return cls(model, choice, scores)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(np.asarray(features, np.float64)), np.float32)


@functools.lru_cache(maxsize=2)
def imputation_data(feats_path: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """The table's names that substances.csv describes: names, their composition + RDKit features, their vectors."""
    table = load_descriptors(feats_path)
    substances = package_substances()
    described = substances[substances["name"].isin(table.vectors)]
    names = tuple(described["name"])
    return names, provider_vectors(IMPUTATION_PROVIDERS, described), np.stack([table.get(n) for n in names])


@functools.lru_cache(maxsize=64)
def fit_imputer(feats_path: str, leave_out: tuple[str, ...] = ()) -> Imputer:
    """The imputer chosen on all the table's described names, refitted without `leave_out` (the choice of model
    and penalty is fixed; a leave-one-substance-out check refits only)."""
    names, features, targets = imputation_data(feats_path)
    chosen = select_imputer(feats_path)
    keep = ~np.isin(names, list(leave_out))
    return chosen if keep.all() else Imputer.fit(features[keep], targets[keep], chosen.choice, chosen.scores)


@functools.lru_cache(maxsize=2)
def select_imputer(feats_path: str) -> Imputer:
    return Imputer.select(*imputation_data(feats_path)[1:])


def new_substance_vectors(descriptors: str, feats_path: str | Path, names: list[str],
                          substances: pd.DataFrame, leave_out: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Vectors for substances the run never trained on, in the run's space: computed by its providers, or for a
    table run imputed by the `Imputer` fitted on the table's names less `leave_out` (a leave-one-substance-out
    check). Names `substances` does not describe are left out."""
    wanted = substances[substances["name"].isin(names)]
    if wanted.empty:
        return {}
    if not is_table(descriptors):
        return dict(zip(wanted["name"], provider_vectors(descriptors, wanted)))
    imputer = fit_imputer(str(feats_path), tuple(sorted(leave_out)))
    return dict(zip(wanted["name"], imputer.predict(provider_vectors(IMPUTATION_PROVIDERS, wanted))))


def rename_substance(table: pd.DataFrame, name: str, new_name: str) -> pd.DataFrame:
    """The recipes with reagent `name` called `new_name` (the product column is left alone)."""
    columns = list(NAME_COLUMNS)
    return table.assign(**{c: table[c].where(table[c] != name, new_name) for c in columns})
