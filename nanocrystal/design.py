"""Design a recipe for a target nanocrystal: search conditions and reagent amounts of a template recipe with Optuna.

The template's named conditions (Temperature1, Temperature2, Time, Speed) and reagent amounts (by substance name) are
sampled within the given ranges by a seeded TPE sampler, a batch of trials at a time, and every batch is predicted in
one call per model. Candidates are ranked by the probability that the synthesis gives what was asked for, under the
size run's calibrated predictive distribution (uncertainty.py), not by the point prediction alone:

    p_success = p_within                                    P(|size - target| <= tolerance)
                * p(target shape) * (1 - p_failed)          (only with a target shape)
    loss = 1 - p_success
           + OUT_OF_DOMAIN + DOMAIN_WEIGHT * max(domain_distance - 1, 0)   (only when out of domain: too far from the
                                                                            training recipes, or outside their range)
           + TIE_BREAK * |size_nm - target|                 (orders candidates of equal probability, e.g. all 0 for
                                                             an unreachable target, by the point prediction)

An out-of-domain candidate always ranks below an in-domain one: calibration holds for recipes like the training ones.
Values are rounded to what a chemist sets (temperatures to 1 °C, time, heating rate and amounts to 3 significant
digits) and then clipped into the range, so every candidate predicted is inside the ranges and is exactly the recipe
returned. The top K distinct candidates are returned: going down the ranking, a candidate is kept only if it differs
from every kept one by at least MIN_SPACING of a range's width (log width for log-sampled ranges) in some varied value,
so the K suggestions are alternatives, not the same recipe with 2.01 instead of 2.02 min.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import optuna
import pandas as pd

from .errors import InputError
from .predict import DEFAULT_CONFIDENCE, Predictor, TrainingRecipes, measured, shape_column, training_positions
from .recipes import (ABSOLUTE_ZERO_C, AMOUNT_COLUMNS, CONDITION_COLUMNS, EMPTY_NAME, FLOAT32_MAX, MAX_TEMPERATURE_C,
                      NAME_COLUMNS, PRODUCT_NAME, REQUIRED_COLUMNS, TEMPERATURE_COLUMNS, UNKNOWN, load_dataset)
from .splits import combined_table

OUT_OF_DOMAIN = 1.0  # flat penalty, the whole range of 1 - p_success: any in-domain candidate ranks first
DOMAIN_WEIGHT = 1.0  # per unit of domain distance beyond the threshold
TIE_BREAK = 1e-6  # per nm off target: below one step of p_within (1 / calibration rows)
BATCH = 32  # trials asked, predicted together, then told
SIGNIFICANT_DIGITS = 3
MIN_SPACING = 0.05  # fraction of a range's width between two returned candidates
DEFAULT_TOLERANCE_NM = 0.5


class DesignError(InputError, ValueError):
    """Every problem with the design request, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Range:
    name: str  # as given: a condition or a substance of the template
    column: str  # the model column it sets
    low: float
    high: float

    @property
    def log(self) -> bool:
        """Amounts and times span decades: sample them on a log scale (when the range allows it)."""
        return self.column not in (*TEMPERATURE_COLUMNS, "Speed") and self.low > 0 and self.high / self.low >= 4


def parse_vary(specs: list[str], template: pd.Series) -> list[Range]:
    """NAME=LOW:HIGH for a condition column or a substance of the template (its amount, mmol)."""
    ranges, problems = [], []
    for spec in specs:
        name, _, bounds = spec.partition("=")
        low_text, _, high_text = bounds.partition(":")
        try:
            low, high = float(low_text), float(high_text)
        except ValueError:
            problems.append(f"--vary {spec!r}: expected NAME=LOW:HIGH with numbers")
            continue
        if name in CONDITION_COLUMNS:
            column = name
        else:
            slots = [a for a, n in zip(AMOUNT_COLUMNS, NAME_COLUMNS) if template[n] == name]
            if not slots:
                problems.append(f"--vary {spec!r}: {name!r} is neither a condition ({', '.join(CONDITION_COLUMNS)}) "
                                f"nor a substance of the template")
                continue
            if len(slots) > 1:  # varying one slot would leave the others' amount beside it
                problems.append(f"--vary {spec!r}: the template names {name!r} in {len(slots)} slots; merge them "
                                "into one first")
                continue
            column = slots[0]
        # the physical range recipes.validate_frame allows
        minimum, maximum = (ABSOLUTE_ZERO_C, MAX_TEMPERATURE_C) if column in TEMPERATURE_COLUMNS else (0.0, FLOAT32_MAX)
        if not (math.isfinite(low) and math.isfinite(high) and minimum <= low < high <= maximum):
            problems.append(f"--vary {spec!r}: need {minimum:g} <= LOW < HIGH <= {maximum:g}")
        elif column in AMOUNT_COLUMNS and low <= 0:
            problems.append(f"--vary {spec!r}: an amount must stay positive (LOW > 0)")
        elif column in [r.column for r in ranges]:
            problems.append(f"--vary {spec!r}: {name} is varied twice")
        else:
            ranges.append(Range(name, column, low, high))
    if problems or not ranges:
        raise DesignError(problems or ["give at least one --vary NAME=LOW:HIGH"])
    return ranges


def practical(value: float, r: Range) -> float:
    """Round to what is set in a lab, then clip: the result is always inside [low, high]."""
    rounded = round(value) if r.column in TEMPERATURE_COLUMNS else float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return float(min(max(rounded, r.low), r.high))


def coverage_warnings(predictor: Predictor, product: str, ranges: list[Range]) -> list[str]:
    """A range reaching beyond the values in the size run's training recipes of the template's product (for an amount:
    those using that substance) gets a warning; without such recipes, all training recipes are the reference."""
    cfg = predictor.size.cfg
    table = combined_table(load_dataset(cfg.data_dir))
    train = table.iloc[np.unique(np.concatenate(list(training_positions(cfg, table).values())))]
    warnings = []
    same, scope = train[train[PRODUCT_NAME] == product], product
    if same.empty:
        warnings.append(f"no training recipe makes {product}: ranges are compared with all training recipes")
        same, scope = train, "any product"
    for r in ranges:
        if r.column in CONDITION_COLUMNS:
            values = same[r.column].to_numpy()
        else:
            values = same[list(AMOUNT_COLUMNS)].to_numpy()[same[list(NAME_COLUMNS)].to_numpy() == r.name]
        if not len(values):
            warnings.append(f"{r.name}: no training recipe of {scope} uses it; predictions are extrapolations")
        elif r.low < values.min() or r.high > values.max():
            warnings.append(f"{r.name}: range {r.low:g}..{r.high:g} reaches beyond the training recipes of {scope} "
                            f"({values.min():g}..{values.max():g})")
    return warnings


def success_probability(prediction: pd.DataFrame, target_shape: str | None) -> np.ndarray:
    value = prediction["p_within"].to_numpy()
    if target_shape is not None:
        value = value * prediction[shape_column(target_shape)].to_numpy() * (1 - prediction["p_failed"].to_numpy())
    return value


def loss(prediction: pd.DataFrame, target_size: float, target_shape: str | None) -> np.ndarray:
    value = 1.0 - success_probability(prediction, target_shape)
    # out of domain: too far from the training recipes, or a value outside their range (predict's in_domain)
    excess = np.maximum(prediction["domain_distance"].to_numpy() - 1.0, 0.0)
    outside = ~prediction["in_domain"].to_numpy(bool)
    off_target = np.abs(prediction["size_nm"].to_numpy() - target_size)
    return value + np.where(outside, OUT_OF_DOMAIN + DOMAIN_WEIGHT * excess, 0.0) + TIE_BREAK * off_target


def unit_coordinates(table: pd.DataFrame, ranges: list[Range]) -> np.ndarray:
    """(N, ranges) position of each varied value within its range, 0..1 (on the log scale for log ranges)."""
    def unit(values: np.ndarray, r: Range) -> np.ndarray:
        if r.log:
            return np.log(values / r.low) / np.log(r.high / r.low)
        return (values - r.low) / (r.high - r.low)
    return np.column_stack([unit(table[r.column].to_numpy(float), r) for r in ranges])


def distinct_best(ranked: pd.DataFrame, ranges: list[Range], top: int) -> pd.DataFrame:
    """Greedy down the ranking: keep a candidate if it is MIN_SPACING away from every kept one in some value."""
    coordinates = unit_coordinates(ranked, ranges)
    kept: list[int] = []
    for i in range(len(ranked)):
        if all(np.abs(coordinates[i] - coordinates[j]).max() >= MIN_SPACING for j in kept):
            kept.append(i)
            if len(kept) == top:
                break
    return ranked.iloc[kept].reset_index(drop=True)


def candidates(template: pd.DataFrame, ranges: list[Range], params: list[dict]) -> pd.DataFrame:
    table = pd.concat([template] * len(params), ignore_index=True)
    for r in ranges:
        table[r.column] = [practical(p[r.name], r) for p in params]
    return table


@dataclass
class Design:
    table: pd.DataFrame  # top K: model columns (labels unknown) + predictions + loss
    warnings: list[str]
    evaluated: int


def design(predictor: Predictor, template: pd.DataFrame, target_size: float, ranges: list[Range],
           target_shape: str | None = None, top: int = 5, trials: int = 256, seed: int = 0,
           on_batch: Optional[Callable[[int, int, float], None]] = None, tolerance: float = DEFAULT_TOLERANCE_NM,
           confidence: float = DEFAULT_CONFIDENCE) -> Design:
    """Search the ranges with TPE(seed) in batches; return the `top` distinct candidates by loss, each with `p_within`
    (size within `tolerance` nm of the target) and its interval at `confidence`. `on_batch` (progress: a bar in the
    CLI or the app) is called after each batch with (evaluated, trials, best loss so far)."""
    if predictor.size_calibration is None:
        raise DesignError([f"{predictor.size.path}: the size run has no calibration (trained with "
                           "--calibration_folds 0): design ranks by calibrated probabilities; train it with them"])
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise DesignError([f"--tolerance {tolerance:g}: must be a positive number of nm"])
    if not 0 < confidence < 1:
        raise DesignError([f"--confidence {confidence:g}: must be between 0 and 1"])
    if len(template) != 1:
        raise DesignError([f"the template must hold exactly one recipe (it holds {len(template)})"])
    if target_shape is not None:
        if predictor.shape is None:
            raise DesignError(["--target-shape needs --shape-run"])
        if target_shape not in predictor.shapes:
            raise DesignError([f"--target-shape {target_shape!r}: not a shape ({', '.join(predictor.shapes)})"])
    if not (math.isfinite(target_size) and target_size > 0):
        raise DesignError([f"--target-size {target_size:g}: must be a positive number of nm"])
    if top < 1 or trials < 1:
        raise DesignError([f"--top {top} and --trials {trials}: both must be at least 1"])
    template = template.assign(**{c: UNKNOWN for c in ("Num", "Y1", "Y2", "Y3")}, failed=False)
    distributions = {r.name: optuna.distributions.FloatDistribution(r.low, r.high, log=r.log) for r in ranges}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True))
    seen = []
    for start in range(0, trials, BATCH):
        asked = [study.ask(distributions) for _ in range(min(BATCH, trials - start))]
        table = candidates(template, ranges, [t.params for t in asked])
        prediction = predictor.predict(table, confidence, within=(target_size, tolerance))
        values = loss(prediction, target_size, target_shape)
        for trial, value in zip(asked, values):
            study.tell(trial, float(value))
        seen.append(pd.concat([table, prediction, pd.DataFrame({"loss": values})], axis=1))
        if on_batch is not None:
            on_batch(start + len(asked), trials, study.best_value)
    found = pd.concat(seen, ignore_index=True).sort_values("loss", kind="stable")
    best = distinct_best(found, ranges, top)
    best["ID"] = np.arange(1, len(best) + 1)
    columns = list(REQUIRED_COLUMNS) + [c for c in found.columns if c not in REQUIRED_COLUMNS and c != "failed"]
    warnings = coverage_warnings(predictor, template[PRODUCT_NAME].iloc[0], ranges)
    if len(best) < top:
        warnings.append(f"only {len(best)} distinct candidates among {len(found)}: raise --trials or widen the ranges")
    outside = int((~best["in_domain"]).sum())
    if outside:
        warnings.append(f"{outside} of the {len(best)} candidates are out of domain: their predictions are "
                        f"extrapolations")
    return Design(best[columns], warnings, len(found))


def response(predictor: Predictor, template: pd.DataFrame, r: Range, points: int = 25) -> pd.DataFrame:
    """The one-recipe template predicted with one value swept over its range (evenly spaced, on the log scale for a
    log range; not rounded): the varied column, then predict's columns, one row per point."""
    if len(template) != 1 or points < 2:
        raise DesignError([f"a response needs one recipe and at least 2 points (got {len(template)} and {points})"])
    grid = np.geomspace(r.low, r.high, points) if r.log else np.linspace(r.low, r.high, points)
    table = pd.concat([template] * points, ignore_index=True)
    table[r.column] = grid
    return pd.concat([table[[r.column]], predictor.predict(table)], axis=1)


def series_measurements(training: TrainingRecipes, template: pd.DataFrame, r: Range) -> pd.DataFrame:
    """The measured training recipes of the template's series along r: the same product, conditions, substances and
    amounts as the one-recipe template (substances in any slot order) except the varied value. The varied value, ID
    and predict.measured's labels, one row per recipe."""
    recipe = template.iloc[0]
    varied = recipe[NAME_COLUMNS[AMOUNT_COLUMNS.index(r.column)]] if r.column in AMOUNT_COLUMNS else None
    conditions = [c for c in CONDITION_COLUMNS if c != r.column]

    def keys(table: pd.DataFrame) -> list[tuple]:
        names, amounts = table[list(NAME_COLUMNS)].to_numpy(object), table[list(AMOUNT_COLUMNS)].to_numpy(float)
        # the varied substance is compared by name only, every other one by name and amount
        return [(tuple(c), tuple(sorted((n, None if n == varied else round(a, 6))
                                        for n, a in zip(row_names, row_amounts) if n != EMPTY_NAME)))
                for c, row_names, row_amounts in zip(table[conditions].to_numpy(float).round(6), names, amounts)]

    rows = training.rows
    rows = rows[rows[PRODUCT_NAME] == recipe[PRODUCT_NAME]]
    wanted = keys(template)[0]
    series = rows[np.array([k == wanted for k in keys(rows)], dtype=bool)]
    if varied is None:
        values = series[r.column].to_numpy(float)
    else:  # whichever slot holds the varied substance
        values = np.where(series[list(NAME_COLUMNS)].to_numpy(object) == varied,
                          series[list(AMOUNT_COLUMNS)].to_numpy(float), 0.0).sum(1)
    return pd.concat([pd.DataFrame({r.column: values, "ID": series["ID"].to_numpy()}),
                      measured(series, training.shapes).reset_index(drop=True)], axis=1)
