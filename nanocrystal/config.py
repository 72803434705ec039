"""One typed configuration for every task and model; argparse fills it, every run folder saves it."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import InputError

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("size", "shape")
SPLITS = ("paper", "grouped")
TREE_MODELS = ("dt", "rf", "et", "hgb", "lgbm")  # baselines.py; the neural ones are model.MODELS
BLEND_MODELS = ("lgbm", "et", "rf")  # tree models whose fitted form saves as text or tensors (baselines.fit_blend)
LGBM_SIZE_GRID = ("leaf3", "leaf20", "new_series")  # LightGBM's size candidates (baselines.LGBM_SIZE_CANDIDATES)
TABLE = "table"  # descriptor providers (substances.py): the upstream Uni-Mol table, or computed ones joined with +
COMPUTED_PROVIDERS = ("composition", "rdkit", "unimol")


def parse_providers(spec: str) -> tuple[str, ...]:
    """`composition+rdkit` -> ('composition', 'rdkit'); ValueError naming --descriptors for a bad or mixed spec."""
    providers = tuple(p.strip() for p in spec.split("+"))
    if any(p not in (TABLE, *COMPUTED_PROVIDERS) for p in providers) or len(set(providers)) < len(providers):
        raise ValueError(f"--descriptors {spec!r}: choose table, or one or more of {', '.join(COMPUTED_PROVIDERS)} "
                         "joined with + (e.g. composition+rdkit), each once")
    if TABLE in providers and len(providers) > 1:
        raise ValueError(f"--descriptors {spec!r}: the table's Uni-Mol vectors cannot be mixed with computed "
                         "providers (they come from a model unimol-tools no longer ships, so no computed block shares "
                         f"their space); use table alone, or {'+'.join(p for p in providers if p != TABLE)}")
    return providers


class ConfigError(InputError, ValueError):
    """Every bad key of a config, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def field_values(items: list[str], flag: str = "--set") -> dict[str, Any]:
    """`FIELD=VALUE` items with JSON values (a bench's `--set pack_tokens=false`) as a dict; checked by `resolve`."""
    values, problems = {}, []
    for item in items:
        key, _, text = item.partition("=")
        try:
            values[key] = json.loads(text)
        except ValueError:
            problems.append(f"{flag} {item}: not FIELD=VALUE with a JSON value")
    if problems:
        raise ConfigError(problems)
    return values


@dataclass
class Config:
    # what to run
    task: str = "size"  # size | shape
    model: str = "transformer"  # transformer | rf | et | dt | hgb | lgbm | mlp | lstm
    preset: str = ""  # set by resolve(): cpu | paper | tiny (tests); empty = the plain defaults below
    split: str = "paper"  # paper | grouped (ignored when object_name is set)
    object_name: list[str] = field(default_factory=list)  # leave-one-product-out products
    shots: int = 0  # few-shot: this many recipes of the held-out product join its training rows (with object_name)
    shot_draws: int = 3  # random draws of those recipes per product (one fold each)
    shot_weight: float = 1.0  # those recipes' sample weight in the tree models' fits (times the weak-row weight)
    seed: int = 0  # split seed (0 = the published split)
    n_folds: int = 5
    folds: list[int] = field(default_factory=list)  # run only these folds (empty = all)

    # data
    data_dir: str = str(ROOT / "data")
    feats_path: str = str(ROOT / "feats" / "unioml_feats_20240309_1x_ours_1x_mof.pkl")
    descriptors: str = TABLE  # table | composition, rdkit, unimol joined with + (substances.py); never mixed
    augmented: str = ""  # folder written by augment.py; empty = no augmentation
    trust_augmented: bool = False  # augmented rows as solid rows instead of weak ones
    use_weak: bool = True  # train on weak (Num < 300) rows
    use_large: bool = True  # train on solid rows with size > 20 nm (shape task; no size loss)
    use_failures: bool = True  # shape task: add the failed syntheses
    failure_fraction: float = 1.0  # shape task: share of the failed syntheses drawn afresh for each epoch

    # inputs
    use_product: bool = True  # product token (upstream drops it for shape and leave-one-product-out)
    size_as_input: bool = False  # shape task: give the measured size as a condition
    amount_scaling: str = "log"  # log | robust (upstream)
    descriptor_pca: int = 8  # tree baselines: PCA components of each descriptor block (fitted on training rows)
    substance_columns: int = 60  # tree baselines: log amount of each of the N most frequent training substances
    chemistry_features: bool = False  # tree baselines: product composition, amounts by role, element ratios

    # model
    d_model: int = 32
    depth: int = 2
    n_heads: int = 4
    d_ffn: int = 64
    dropout: float = 0.0
    freeze_descriptors: bool = False
    numeric_embedding: str = "periodic"  # periodic (rtdl PLR) | mlp: how amounts and conditions become vectors
    substance_embedding: bool = True  # learned per-substance offset added to the projected descriptor
    pack_tokens: bool = False  # transformer on a CPU: compute only the real tokens (model.packed_encoder)

    # training
    epochs: int = 150
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_epochs: int = 10
    ema_decay: float = 0.99
    huber_delta: float = 1.0
    weak_band: float = 0.15  # a weak row within this fraction of its label contributes no loss
    weak_weight: float = 1.0  # weight of a weak row outside its band
    pretrain_epochs: int = 0  # masked-target pretraining before finetuning
    pretrain_mask_rate: float = 0.5
    shape_aux_weight: float = 0.0  # size: >0 adds this times the shape cross-entropy of the size rows (multi-task)
    n_members: int = 2  # ensemble members per fold (different seeds)
    snapshots: int = 3  # EMA snapshots kept per member (an ensemble from one training run)
    snapshot_span: float = 0.3  # snapshots are spread over this last fraction of the epochs
    tree_blend: float = 0.0  # weight of the fold's tree models (each chosen by inner CV) in the prediction
    blend_models: list[str] = field(default_factory=lambda: ["lgbm"])  # those tree models (lgbm | et | rf), averaged
    lgbm_seeds: int = 1  # LightGBM (blended or alone) is the mean of this many fits with seeds seed, seed + 1, ...
    lgbm_huber_delta: float = 0.0  # size: >0 fits LightGBM to log(size) with a Huber loss of this delta, not squares
    lgbm_grid: list[str] = field(default_factory=lambda: list(LGBM_SIZE_GRID))  # size: LightGBM's candidates
    series_correction: bool = False  # size: move a prediction by its recipe series' training residuals (correction.py)
    correction_scale: float = 0.25  # condition distance at which a sibling's weight falls by e
    correction_shrink: float = 0.0  # >0 pulls the correction towards none when the siblings are few or far
    inner_val_frac: float = 0.0  # >0: pick the epoch count on this part of the training rows, then refit
    confidence: float = 0.9  # of the size intervals and shape sets in oof_predictions.csv and metrics.json
    calibration_folds: int = 10  # inner folds whose out-of-fold predictions calibrate them (0 = none; uncertainty.py)
    eval_every: int = 0  # >0: also log the held-out fold every N epochs, labelled val-selected (upstream style)
    threads: int = 1  # torch threads per process (0 = torch's default)
    workers: int = 1  # folds trained in parallel processes
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: bool = True  # on a GPU only: the forward pass in bfloat16 autocast (engine.train_step)
    compile_model: bool = False  # torch.compile the training forward (engine.for_training; minutes to compile)
    backend: str = "local"  # local (this process, or --workers processes) | ray (a Ray task per fold; backend.py)
    ray_address: str = ""  # --backend ray: a running cluster's address (empty: a Ray started for the command)
    job_gpus: float = 0.0  # --backend ray: the share of a GPU each fold's task requests (0.2: five folds on one)

    # output
    save_path: str = ""  # default runs/<exp>-<timestamp>
    exp: str = ""
    resume: bool = False

    def __post_init__(self):
        # checked before any training: a bad name would otherwise stop the run after the first fold's transformer
        for flag, value, known in (("--task", self.task, TASKS), ("--split", self.split, SPLITS)):
            if value not in known:
                raise ValueError(f"{flag} {value!r}: choose from {', '.join(known)}")
        unknown = [m for m in self.blend_models if m not in BLEND_MODELS]
        if unknown:
            raise ValueError(f"--blend_models: {', '.join(unknown)} cannot be blended; choose from "
                             f"{', '.join(BLEND_MODELS)}")
        unknown = [name for name in self.lgbm_grid if name not in LGBM_SIZE_GRID]
        if unknown or not self.lgbm_grid:
            raise ValueError(f"--lgbm_grid: {', '.join(unknown) or 'no candidate'}; choose one or more of "
                             f"{', '.join(LGBM_SIZE_GRID)}")
        if self.lgbm_seeds < 1 or self.lgbm_huber_delta < 0:
            raise ValueError(f"--lgbm_seeds must be >= 1 and --lgbm_huber_delta >= 0, got {self.lgbm_seeds} and "
                             f"{self.lgbm_huber_delta}")
        if parse_providers(self.descriptors) != (TABLE,) and self.augmented:
            raise ValueError(f"--augmented needs --descriptors table: reaction intermediates (A@B) have vectors only "
                             f"in the table, not with {self.descriptors}")
        if self.shots and (not self.object_name or self.augmented):
            raise ValueError("--shots needs --object_name (leave-one-product-out) and takes no --augmented rows")
        if self.shot_weight != 1.0 and not self.shots:
            raise ValueError(f"--shot_weight {self.shot_weight} weighs the held-out product's recipes in training: "
                             "it needs --shots")
        if not 0 < self.failure_fraction <= 1:
            raise ValueError(f"--failure_fraction must be in (0, 1], got {self.failure_fraction}")
        if self.correction_scale <= 0 or self.correction_shrink < 0:
            raise ValueError(f"--correction_scale must be > 0 and --correction_shrink >= 0, got "
                             f"{self.correction_scale} and {self.correction_shrink}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict, source: str = "") -> "Config":
        """Every value's type (from the annotations) and range checked; ConfigError lists each bad key. `source`
        names where the values come from (a file); without it the keys are named as flags."""
        if "lgbm_blend" in values:  # run folders written before the blend took other trees than LightGBM
            values = {**{k: v for k, v in values.items() if k != "lgbm_blend"}, "tree_blend": values["lgbm_blend"]}
        values, problems = _checked_values(values)
        where = (lambda key: f"{source}: {key}") if source else (lambda key: f"--{key}")
        if problems:
            raise ConfigError([f"{where(key)}: {message}" for key, message in problems])
        try:
            return cls(**values)
        except ValueError as error:  # __post_init__: the flag is named in the message
            raise ConfigError([f"{source}: {error}" if source else str(error)]) from None

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise ConfigError([f"{path}: no such file"])
        try:
            values = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError([f"{path}: not a JSON config ({error})"]) from None
        if not isinstance(values, dict):
            raise ConfigError([f"{path}: expected a JSON object of settings, got {type(values).__name__}"])
        return cls.from_dict(values, str(path))


# Presets set training and model fields; flags given on the command line win over them.
PRESETS: dict[str, dict] = {
    # the transformer ensemble averaged with the fold's LightGBM and extra trees at weight 0.8, then (size) the series
    # correction: models, weight and correction were chosen on inner validation, for size and for shape
    # (docs/size_model.md, docs/shape.md); for size, LightGBM is 3 seeds' mean with a Huber loss and leaves of at least
    # 20 rows: alone it scores worse than leaves of 3 on the paper split's inner folds, in this blend after the
    # correction better (best_cls.sh keeps shape's validated single LightGBM; baselines.sh LightGBM alone, one fit
    # with squared error, chosen from the whole grid)
    "cpu": dict(workers=2, tree_blend=0.8, blend_models=["lgbm", "et"], lgbm_seeds=3, lgbm_huber_delta=0.05,
                lgbm_grid=["leaf20"], series_correction=True),
    "tiny": dict(d_model=16, depth=1, n_heads=2, d_ffn=32, epochs=3, batch_size=256, n_members=1, snapshots=1,
                 warmup_epochs=1, calibration_folds=3),
    "paper": dict(d_model=256, depth=8, n_heads=4, d_ffn=256, dropout=0.1, epochs=8000, pretrain_epochs=200,
                  batch_size=256, lr=2e-4, weight_decay=0.01, warmup_epochs=10, ema_decay=0.99,
                  amount_scaling="robust", numeric_embedding="mlp", substance_embedding=False, n_members=1,
                  snapshots=1, workers=1, pack_tokens=True),
}
# New recipe series (best_size.sh --split grouped --preset new_series): the cpu preset with the tree weight and
# LightGBM's candidates chosen on the grouped split's inner folds, where no series straddles the inner split
# (docs/size_model.md)
PRESETS["new_series"] = {**PRESETS["cpu"], "tree_blend": 0.6, "lgbm_grid": list(LGBM_SIZE_GRID)}
# New products (best_new.sh, bench/lopo_all.py): the cpu preset's LightGBM alone, with the product's descriptor among
# its features, chosen on leave-one-product-out over four proxy products (docs/lopo.md); each product's inner CV
# chooses among all of LightGBM's candidates
PRESETS["new_product"] = {**PRESETS["cpu"], "model": "lgbm", "use_product": True, "lgbm_grid": list(LGBM_SIZE_GRID)}


def resolve(preset: str, overrides: Optional[dict] = None) -> Config:
    """Defaults, then the preset, then explicit overrides."""
    if preset not in PRESETS:
        raise ConfigError([f"--preset {preset!r}: choose from {', '.join(PRESETS)}"])
    values = {**PRESETS[preset], **(overrides or {}), "preset": preset}
    return Config.from_dict(values)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is(value: Any, kind: type) -> bool:
    """JSON's types as the annotation names them: true/false only for bool, a whole number for int, a finite number
    (whole or not) for float; a string is never read as a number."""
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        try:
            return math.isfinite(value)
        except OverflowError:  # an int beyond any float
            return False
    if kind is int:  # within 32 bits: every count, index and seed the code hands to numpy and torch
        return isinstance(value, int) and not isinstance(value, bool) and -2 ** 31 < value < 2 ** 31
    return isinstance(value, kind)


def _type_problem(value: Any, hint: Any) -> str | None:
    names = {bool: "true or false", int: "a whole number below 2^31", float: "a finite number", str: "a string"}
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            return f"expected a list of {item.__name__}, got {_short(value)}"
        wrong = [v for v in value if not _is(v, item)]
        return f"expected a list of {item.__name__}, got {_short(wrong[0])} in it" if wrong else None
    return None if _is(value, hint) else f"expected {names[hint]}, got {_short(value)}"


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low:g}"


def _between(low: float, high: float, high_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    return ((lambda v: low <= v < high) if high_open else (lambda v: low <= v <= high),
            f"in [{low:g}, {high:g}{')' if high_open else ']'}")


def _above(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v > low), f"> {low:g}"


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


# What a value may hold beyond its type: checked before a run folder exists, so a bad value never stops a run midway.
# (task, split, blend_models and the LightGBM (lgbm_grid too), failure and correction settings are checked by
# __post_init__.)
_LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "preset": _one_of("", *PRESETS),
    "seed": _at_least(0),  # numpy's seeds are not negative
    "n_folds": _at_least(2),
    "shots": _at_least(0), "shot_draws": _at_least(1), "shot_weight": _above(0),
    "folds": ((lambda v: all(i >= 0 for i in v)), "fold indices >= 0"),
    "amount_scaling": _one_of("log", "robust"),
    "descriptor_pca": _at_least(1),
    "substance_columns": _at_least(0),
    "d_model": _at_least(1), "depth": _at_least(1), "n_heads": _at_least(1), "d_ffn": _at_least(1),
    "dropout": _between(0, 1, high_open=True),
    "numeric_embedding": _one_of("periodic", "mlp"),
    "epochs": _at_least(1), "batch_size": _at_least(1),
    "lr": _above(0),
    "weight_decay": _at_least(0), "warmup_epochs": _at_least(0),
    "ema_decay": _between(0, 1),
    "huber_delta": _above(0),
    "weak_band": _at_least(0), "weak_weight": _at_least(0),
    "pretrain_epochs": _at_least(0), "pretrain_mask_rate": _between(0, 1), "shape_aux_weight": _at_least(0),
    "n_members": _at_least(1), "snapshots": _at_least(1), "snapshot_span": _between(0, 1),
    "tree_blend": _between(0, 1),
    "inner_val_frac": _between(0, 1, high_open=True),
    "confidence": ((lambda v: 0 < v < 1), "in (0, 1)"),
    "calibration_folds": ((lambda v: v == 0 or v >= 2), "0 (no calibration) or >= 2"),
    "eval_every": _at_least(0), "threads": _at_least(0), "workers": _at_least(1),
    "device": ((lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:")), "auto, cpu, cuda or cuda:N"),
    "backend": _one_of("local", "ray"),
    "job_gpus": _at_least(0),
}


def _checked_values(values: dict) -> tuple[dict, list[tuple[str, str]]]:
    """The values with ints of float fields as floats, and (key, problem) for each unknown or bad key."""
    hints = typing.get_type_hints(Config)
    problems = [(key, "unknown key") for key in values if key not in hints]
    checked = {}
    for key, value in values.items():
        if key not in hints:
            continue
        problem = _type_problem(value, hints[key])
        if problem is None and key in _LIMITS and not _LIMITS[key][0](value):
            problem = f"must be {_LIMITS[key][1]}, got {_short(value)}"
        if problem:
            problems.append((key, problem))
        checked[key] = float(value) if hints[key] is float and not problem else value
    if not problems:
        merged = {f.name: f.default for f in dataclasses.fields(Config)} | checked
        if merged["model"] == "transformer" and merged["d_model"] % merged["n_heads"]:
            problems.append(("n_heads", f"must divide d_model ({merged['d_model']}), got {merged['n_heads']}"))
    return checked, problems


def config_parser() -> argparse.ArgumentParser:
    """One flag per Config field (same name, same type); a flag not given keeps the preset's or config file's value."""
    parser = argparse.ArgumentParser(prog="train.py", description="Train and evaluate over the folds of a split. "
                                     "Defaults shown are the cpu preset's; --preset tiny or paper changes them.")
    parser.add_argument("--config", default=None,
                        help="a run's config.json: re-run it (other flags override; --preset is refused)")
    cpu = resolve("cpu")  # what a flag not given means
    for spec in dataclasses.fields(Config):
        flag = f"--{spec.name}"
        default = getattr(cpu, spec.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default {default})")
        elif isinstance(default, list):
            item = int if spec.name == "folds" else str
            parser.add_argument(flag, nargs="*", type=item, default=None, help="list")
        else:
            parser.add_argument(flag, type=type(default), default=None, help=f"(default {default!r})")
    # the older name of --tree_blend, in the commands that run folders of earlier versions recorded
    parser.add_argument("--lgbm_blend", dest="tree_blend", type=float, default=None, help=argparse.SUPPRESS)
    return parser


def config_from_args(argv: list[str] | None = None) -> Config:
    args = vars(config_parser().parse_args(argv))
    config_file = args.pop("config")
    given = {k: v for k, v in args.items() if v is not None}
    if config_file:
        if "preset" in given:  # the file holds a preset's values already; applying another one would be half done
            raise ConfigError(["--preset cannot be combined with --config: the config file already holds its "
                               "preset's values; override single flags instead"])
        base = json.loads(Config.load(config_file).to_json())
        base.pop("save_path"), base.pop("resume")
        return Config.from_dict({**base, **given})
    return resolve(given.pop("preset", "cpu"), given)
