"""Reaction-intermediate augmentation (docs/protocol.md section 6): the rules, per-fold tables, their manifest and
the loader.

A generated row is one of its source recipe with 1-3 reactions applied: two reagents A and B that both have a
positive amount, and whose intermediate (named `A@B` or `B@A`, whichever the descriptor file has) has a descriptor,
give up the same amount r, and the intermediate gains r. So every reagent's amount plus its share in intermediates is
conserved. Conditions, product and labels are copied.

Each source row draws from its own generator, seeded by (augment seed, source ID): its generated rows do not depend on
which other rows are in the fold, so every fold file holds the same rows for the same source.

Generated row IDs: AUG_ID_BASE + MAX_K * source_ID + r (r = 0..K-1), so they are unique, the same across fold files
for the same generated row, and above every dataset ID (checked).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from .descriptors import INTERMEDIATE_SEPARATOR, intermediate_name, load_descriptors
from .errors import InputError
from .fetch import sha256_of
from .files import write_text
from .recipes import (AMOUNT_COLUMNS, CONDITION_COLUMNS, EMPTY_NAME, FAILURES_FILE, LABEL_COLUMNS, NAME_COLUMNS,
                      OPTIONAL_COLUMNS, PRODUCT_AMOUNT, PRODUCT_NAME, RECIPES_FILE, REQUIRED_COLUMNS, load_dataset,
                      read_table)
from .splits import Fold, combined_table, make_folds

AUG_ID_BASE = 100_000_000
MAX_K = 1000
MAX_ROUNDS = 3
MANIFEST = "manifest.json"
ID_SCHEME = f"ID = {AUG_ID_BASE} + {MAX_K} * source_ID + r, r = 0..k-1"
FOLD_SETTINGS = ("split", "seed", "n_folds", "object_name")  # what decides which rows a fold trains on


class AugmentError(InputError, ValueError):
    pass


class Pair(NamedTuple):
    first: int  # slot of the intermediate's first component
    second: int
    name: str  # the intermediate, as the descriptor file spells it


PairIndex = dict[tuple[str, str], str]  # (reagent, reagent) in either order -> intermediate name


def pair_index(intermediates: Iterable[str]) -> PairIndex:
    """The descriptor file has each intermediate in one order only (`OLA@OA`, not `OA@OLA`); look it up both ways."""
    index: PairIndex = {}
    for name in intermediates:
        first, second = name.split(INTERMEDIATE_SEPARATOR)  # exactly two: an intermediate of two reagents
        index[(first, second)] = name
        index[(second, first)] = name
    return index


def _pairs(names: list[str], amounts: list[float], index: PairIndex) -> list[Pair]:
    live = [s for s, (n, m) in enumerate(zip(names, amounts)) if m > 0 and n != EMPTY_NAME]
    pairs = []
    for a, i in enumerate(live):
        for j in live[a + 1:]:
            name = index.get((names[i], names[j]))
            if name is not None:
                first, second = (i, j) if name == intermediate_name(names[i], names[j]) else (j, i)
                pairs.append(Pair(first, second, name))
    return pairs


def _react(names: list[str], amounts: list[float], pair: Pair, r: float, target: int | None) -> None:
    """Both reagents lose r (an exhausted one leaves its slot); the intermediate gains r in its slot, else in target."""
    for slot in (pair.first, pair.second):
        amounts[slot] -= r
        if amounts[slot] <= 0:
            names[slot], amounts[slot] = EMPTY_NAME, 0.0
    slot = names.index(pair.name) if pair.name in names else target
    names[slot] = pair.name
    amounts[slot] += r


def augment_recipe(names: Sequence[str], amounts: Sequence[float], index: PairIndex,
                   rng: np.random.Generator) -> tuple[list[str], list[float]]:
    """One generated composition: 1-3 rounds of the replace or insert rule (inputs are not modified).

    A round picks a rule at random among those that apply (insert needs an empty slot, or the intermediate already
    in a slot), then a pair uniformly among the possible ones; it stops early when no pair is left. Intermediates do
    not react further (no descriptor names three substances), so the pairs are those of the source recipe whose two
    reagents are both still in their slots.
    """
    source = list(names)
    names, amounts = list(names), [float(m) for m in amounts]
    candidates = _pairs(names, amounts, index)
    for _ in range(rng.integers(1, MAX_ROUNDS + 1)):
        pairs = [p for p in candidates if names[p.first] == source[p.first] and names[p.second] == source[p.second]]
        if not pairs:
            break
        empty = [s for s, n in enumerate(names) if n == EMPTY_NAME]
        insertable = pairs if empty else [p for p in pairs if p.name in names]
        insert = bool(insertable) and rng.random() < 0.5
        choices = insertable if insert else pairs
        pair = choices[rng.integers(len(choices))]
        low = min(amounts[pair.first], amounts[pair.second])
        if insert:
            # all of the smaller amount, or a uniform fraction in (0, 1] of it
            r = low if rng.random() < 0.5 else low * (1.0 - rng.random())
            target = empty[0] if empty else None
        else:
            # replace: the exhausted reagent's slot becomes the intermediate (the first component's when equal)
            r = low
            target = pair.second if amounts[pair.second] < amounts[pair.first] else pair.first
        _react(names, amounts, pair, r, target)
    return names, amounts


def augment_table(recipes: pd.DataFrame, index: PairIndex, k: int, seed: int) -> pd.DataFrame:
    """K generated rows per recipe, model layout plus source_ID and augmented=1 (duplicates are still in)."""
    if not 1 <= k <= MAX_K:
        raise AugmentError(f"k = {k}: must be between 1 and {MAX_K} (the ID scheme reserves {MAX_K} IDs per row)")
    if len(recipes) and recipes["ID"].max() >= AUG_ID_BASE:
        raise AugmentError(f"dataset IDs reach {recipes['ID'].max()}: generated IDs ({ID_SCHEME}) would collide")
    names = recipes[list(NAME_COLUMNS)].to_numpy(dtype=object)
    amounts = recipes[list(AMOUNT_COLUMNS)].to_numpy(dtype=np.float64)
    ids = recipes["ID"].to_numpy(dtype=np.int64)
    out_names, out_amounts = [], []
    for row_names, row_amounts, source_id in zip(names, amounts, ids):
        rng = np.random.default_rng([seed, int(source_id)])
        for _ in range(k):
            new_names, new_amounts = augment_recipe(row_names, row_amounts, index, rng)
            out_names.append(new_names)
            out_amounts.append(new_amounts)
    frame = recipes.iloc[np.repeat(np.arange(len(recipes)), k)].reset_index(drop=True)
    frame[list(NAME_COLUMNS)] = np.array(out_names, dtype=object).reshape(-1, len(NAME_COLUMNS))
    frame[list(AMOUNT_COLUMNS)] = np.array(out_amounts, dtype=np.float64).reshape(-1, len(AMOUNT_COLUMNS))
    frame["source_ID"] = np.repeat(ids, k)
    frame["augmented"] = 1
    frame["ID"] = AUG_ID_BASE + MAX_K * frame["source_ID"] + np.tile(np.arange(k), len(recipes))
    return frame[[*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]]


def content_keys(table: pd.DataFrame) -> pd.Series:
    """What makes two rows the same training example: everything but the IDs, with the slots as a multiset
    (slot order carries no meaning; amounts to 10 significant digits)."""
    rest = zip(*(table[c].tolist() for c in (*CONDITION_COLUMNS, *LABEL_COLUMNS, PRODUCT_AMOUNT, PRODUCT_NAME)))
    names = table[list(NAME_COLUMNS)].to_numpy(dtype=object).tolist()
    amounts = table[list(AMOUNT_COLUMNS)].to_numpy(dtype=np.float64).tolist()
    keys = [repr(r) + "|".join(sorted(f"{n}={m:.10g}" for n, m in zip(row_names, row_amounts) if n != EMPTY_NAME))
            for r, row_names, row_amounts in zip(rest, names, amounts)]
    return pd.Series(keys, index=table.index)


@dataclass(frozen=True)
class FoldStats:
    sources: int  # training recipes of the fold
    generated: int  # k per source
    dropped: int  # identical to a training recipe of the fold (their source included) or to an earlier generated row
    unchanged: int  # of the dropped: identical to a training recipe (mostly their source, where no pair reacts)
    written: int
    success_rate: float  # fraction of sources with at least one row written


def fold_rows(generated: pd.DataFrame, generated_keys: pd.Series, recipe_ids: np.ndarray,
              recipe_keys: pd.Series) -> tuple[np.ndarray, FoldStats]:
    """Positions in `generated` of the rows of these source recipes, without duplicates."""
    chosen = np.flatnonzero(generated["source_ID"].isin(recipe_ids).to_numpy())
    keys = generated_keys.iloc[chosen]
    unchanged = keys.isin(set(recipe_keys)).to_numpy()
    duplicate = unchanged | keys.duplicated().to_numpy()
    kept = chosen[~duplicate]
    stats = FoldStats(sources=len(recipe_ids), generated=len(chosen), dropped=int(duplicate.sum()),
                      unchanged=int(unchanged.sum()), written=len(kept),
                      success_rate=generated["source_ID"].iloc[kept].nunique() / max(len(recipe_ids), 1))
    return kept, stats


def fold_tables(table: pd.DataFrame, folds: list[Fold], index: PairIndex, k: int,
                seed: int) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, FoldStats]]]:
    """The generated rows of every recipe, and for each fold the positions of those its table keeps: rows of its
    training recipes (no failures, no validation rows), duplicates dropped."""
    recipes = table[~table["failed"]]
    generated = augment_table(recipes, index, k, seed)
    generated_keys, recipe_keys = content_keys(generated), content_keys(recipes)
    selections = {}
    for fold in folds:
        train = np.zeros(len(table), dtype=bool)
        train[fold.train] = True
        sources = train[~table["failed"].to_numpy()]
        selections[fold.name] = fold_rows(generated, generated_keys, recipes["ID"].to_numpy()[sources],
                                          recipe_keys[sources])
    return generated, selections


# ---- files: fold tables, manifest, loader ------------------------------------------------------------------------

def file_name(fold_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.()+-]", "_", fold_name) + ".csv"


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise AugmentError(f"{path}: not a readable manifest ({error})") from None


def _describe(settings: dict) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in settings.items() if value is not None)


def _csv_lines(frame: pd.DataFrame) -> tuple[str, list[str]]:
    """The header and one line per row: fold files share rows, so each row is formatted once."""
    header, *lines = frame.to_csv(index=False, lineterminator="\n").split("\n")[:-1]
    if len(lines) != len(frame):
        raise AugmentError("a substance name contains a line break; cannot write the augmented tables")
    return header, lines


def write_folder(out: Path, generated: pd.DataFrame, selections: dict[str, tuple[np.ndarray, FoldStats]],
                 settings: dict, sources: dict, overwrite: bool) -> dict:
    """Write the fold files and then manifest.json (removed first, so an interrupted run leaves no manifest and the
    loader refuses the folder). A folder made with other settings, or not by this function, needs overwrite."""
    old = read_manifest(out)
    if old is not None and {key: old.get(key) for key in settings} != settings and not overwrite:
        raise AugmentError(f"{out}: holds augmentation made with {_describe({k: old.get(k) for k in settings})}; "
                           f"this run has {_describe(settings)}. Pass --overwrite, or choose another --out")
    if old is None and out.is_dir() and any(out.iterdir()) and not overwrite:
        raise AugmentError(f"{out}: not empty and has no {MANIFEST} (not written by augment.py, or interrupted); "
                           "pass --overwrite, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    header, lines = _csv_lines(generated)
    files = {}
    for name, (positions, stats) in selections.items():
        path = out / file_name(name)
        text = "\n".join([header, *(lines[p] for p in positions)]) + "\n"
        write_text(path, text)
        files[name] = {"file": path.name, "sha256": sha256_of(path), **asdict(stats)}
    stale = {entry["file"] for entry in (old or {}).get("files", {}).values()} - {f["file"] for f in files.values()}
    for stale_name in stale:
        (out / stale_name).unlink(missing_ok=True)
    manifest = {**settings, "id_scheme": ID_SCHEME, "sources": sources, "files": files}
    write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def augment_split(data_dir: str | Path, feats_path: str | Path, out: str | Path, split: str, seed: int,
                  n_folds: int, object_names: Sequence[str], k: int, augment_seed: int, overwrite: bool) -> dict:
    """Load the dataset, make the folds as training does, write one augmented table per fold; returns the manifest."""
    data_dir, feats_path = Path(data_dir), Path(feats_path)
    table = combined_table(load_dataset(data_dir))
    folds = make_folds(table, split, n_folds, seed, list(object_names))
    index = pair_index(load_descriptors(feats_path).intermediates())
    settings = {**_fold_settings(split, seed, n_folds, object_names), "k": k, "augment_seed": augment_seed}
    sources = {path.name: sha256_of(path) for path in (data_dir / RECIPES_FILE, data_dir / FAILURES_FILE, feats_path)}
    generated, selections = fold_tables(table, folds, index, k, augment_seed)
    return write_folder(Path(out), generated, selections, settings, sources, overwrite)


def _fold_settings(split: str, seed: int, n_folds: int, object_names: Sequence[str]) -> dict:
    if object_names:  # leave-one-product-out folds depend on the products only
        return {"split": None, "seed": None, "n_folds": None, "object_name": sorted(object_names)}
    return {"split": split, "seed": seed, "n_folds": n_folds, "object_name": []}


def load_augmented(folder: str | Path, split: str, seed: int, n_folds: int, object_names: Sequence[str],
                   fold_name: str, n_shapes: int) -> pd.DataFrame:
    """The augmented rows for one fold (`fold0`.. or the held-out product), validated by recipes.read_table, with
    integer source_ID and augmented columns. Raises AugmentError when the folder was made for other folds, the
    fold's file is missing or has changed since it was written."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise AugmentError(f"{folder}: no {MANIFEST} (run augment.py, or it was interrupted)")
    want = _fold_settings(split, seed, n_folds, object_names)
    have = {key: manifest.get(key) for key in FOLD_SETTINGS}
    # a product's file depends on that product only, so a folder made for more products serves
    matches = set(object_names) <= set(have["object_name"] or []) if object_names else have == want
    if not matches:
        raise AugmentError(f"{folder}: made for {_describe(have)}, but this run has {_describe(want)}; "
                           "rerun augment.py with these settings into another folder")
    entry = manifest["files"].get(fold_name)
    if entry is None:
        raise AugmentError(f"{folder}: no augmented table for fold {fold_name!r} (has {', '.join(manifest['files'])})")
    path = folder / entry["file"]
    if not path.is_file():
        raise AugmentError(f"{path}: no such file (listed in {folder / MANIFEST}); rerun augment.py")
    if sha256_of(path) != entry["sha256"]:
        raise AugmentError(f"{path}: changed since augment.py wrote it (checksum differs from {MANIFEST})")
    table = read_table(path, n_shapes)
    for column in OPTIONAL_COLUMNS:
        table[column] = table[column].astype(np.int64)
    return table
