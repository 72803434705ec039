"""Calibrated uncertainty: conformal size intervals and shape prediction sets (crepes).

Calibration rows are rows the scored model did not train on and that are not in the held-out fold: the out-of-fold
predictions of an inner K-fold cross-validation over the fold's training rows (`runs` makes them; see
docs/uncertainty.md for which models they come from). No held-out label ever reaches a calibrator.

Size, in log space (errors grow with the size):

    r = log(size / predicted)                  signed residual of a calibration row
    sigma(x) = exp(z(x) . b_c)                 difficulty: z = the features below, b_c a least-squares fit of
                                               log(|r| + EPS) within category c, cross-fitted over the inner folds
    interval = predicted * exp(+-q_c sigma(x)) q_c: the conformal quantile of |r| / sigma in category c

Categories (Mondrian): whether the recipe's series (product, reagents and amounts) has a training row, since a recipe
of a new series errs about twice as much. Difficulty features: the log spread of the model's members (its trees or
seeds), the log proximity of the series' training rows (sum of exp(-distance / scale) over them, the series
correction's weights), a constant. With `normalized=False` sigma is 1: plain Mondrian split conformal on |r|, the
baseline the normalised score has to beat. The same calibration gives a conformal predictive system: a CDF of the
size, hence the probability that it lands within a tolerance of a target (design).

Shape: conformal classification with the score 1 - p(true shape) (crepes' hinge score), which gives the smallest
sets on average at a given coverage.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from crepes import ConformalClassifier, ConformalPredictiveSystem, ConformalRegressor

from .correction import Siblings

SEEN, NEW = 0, 1  # Mondrian categories: the recipe's series has a training row, or none
CATEGORY_NAMES = {SEEN: "seen_series", NEW: "new_series"}
MIN_CATEGORY_ROWS = 30  # fewer calibration rows in a category: one category for all (a 90 % quantile needs >= 10)
EPS = 0.01  # in |log residual| (1 %): keeps log(|r|) finite for exact predictions
SPREAD_FLOOR = 0.01  # log-size spread below 1 % carries no more information


def difficulty_features(spread: np.ndarray, proximity: np.ndarray) -> np.ndarray:
    """(rows, 3): constant, log spread, log(1 + proximity)."""
    spread = np.asarray(spread, np.float64)
    proximity = np.asarray(proximity, np.float64)
    return np.column_stack([np.ones(len(spread)), np.log(np.maximum(spread, SPREAD_FLOOR)), np.log1p(proximity)])


def categories(seen: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(seen, bool), SEEN, NEW)


def _least_squares(features: np.ndarray, target: np.ndarray) -> np.ndarray:
    if len(target) < features.shape[1] * 5:  # too few rows to weigh the features: the mean only
        return np.r_[target.mean() if len(target) else 0.0, np.zeros(features.shape[1] - 1)]
    return np.linalg.lstsq(features, target, rcond=None)[0]


@dataclass(frozen=True)
class SizeCalibration:
    log_residuals: np.ndarray  # signed log(true / predicted) of the calibration rows
    sigmas: np.ndarray  # their cross-fitted difficulty
    bins: np.ndarray  # their category (all SEEN when the categories were merged)
    coefficients: np.ndarray  # (2, n_features): the difficulty model of each category, fitted on every calibration row
    sigma_range: np.ndarray  # (2,): smallest and largest calibration sigma; a new recipe's sigma is clipped into it
    mondrian: bool  # False when a category had too few rows (one category for all)

    @classmethod
    def fit(cls, log_residuals: np.ndarray, features: np.ndarray, seen: np.ndarray, groups: np.ndarray,
            normalized: bool = True) -> "SizeCalibration":
        """`features`: `difficulty_features` of the calibration rows; `groups`: their inner fold (the difficulty
        model of a row's sigma never saw that row's fold)."""
        log_residuals = np.asarray(log_residuals, np.float64)
        bins = categories(seen)
        counts = np.bincount(bins, minlength=2)
        mondrian = bool(counts.min() >= MIN_CATEGORY_ROWS)
        if not mondrian:
            bins = np.full(len(bins), SEEN)
        features = features if normalized else features[:, :1]
        target = np.log(np.abs(log_residuals) + EPS)
        coefficients = np.zeros((2, features.shape[1]))
        sigmas = np.ones(len(target))
        for category in np.unique(bins):
            rows = bins == category
            coefficients[category] = _least_squares(features[rows], target[rows])
            if normalized:
                for group in np.unique(groups[rows]):
                    held = rows & (groups == group)
                    fit = rows & (groups != group)
                    sigmas[held] = np.exp(features[held] @ _least_squares(features[fit], target[fit]))
        if not normalized:
            coefficients[:] = 0.0
        return cls(log_residuals, sigmas, bins, coefficients, np.array([sigmas.min(), sigmas.max()]), mondrian)

    @classmethod
    def pool(cls, calibrations: list["SizeCalibration"]) -> "SizeCalibration":
        """One calibration from several folds' normalised scores (predict's ensemble of the folds; the caller gives
        each recipe the mean of the folds' sigmas). Its own difficulty model is not used."""
        mondrian = all(c.mondrian for c in calibrations)
        bins = np.concatenate([c.bins if mondrian else np.full(len(c.bins), SEEN) for c in calibrations])
        sigmas = np.concatenate([c.sigmas for c in calibrations])
        return cls(np.concatenate([c.log_residuals for c in calibrations]), sigmas, bins,
                   np.full_like(calibrations[0].coefficients, np.nan), np.array([sigmas.min(), sigmas.max()]),
                   mondrian)

    def sigma(self, features: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """The difficulty of new rows (their `difficulty_features` and whether their series was seen)."""
        width = self.coefficients.shape[1]
        raw = np.exp(np.einsum("ij,ij->i", features[:, :width], self.coefficients[self.bins_of(seen)]))
        return np.clip(raw, *self.sigma_range)

    def bins_of(self, seen: np.ndarray) -> np.ndarray:
        return categories(seen) if self.mondrian else np.full(len(seen), SEEN)

    def interval(self, predicted_nm: np.ndarray, sigma: np.ndarray, seen: np.ndarray,
                 confidence: float) -> tuple[np.ndarray, np.ndarray]:
        """The conformal interval (nm) at `confidence` around each prediction of difficulty `sigma`."""
        regressor = ConformalRegressor().fit(self.log_residuals, sigmas=self.sigmas, bins=self.bins)
        bounds = regressor.predict_int(np.log(predicted_nm), sigmas=sigma, bins=self.bins_of(seen),
                                       confidence=confidence)
        return np.exp(bounds[:, 0]), np.exp(bounds[:, 1])

    def widen(self, predicted_nm: np.ndarray, sigma: np.ndarray, seen: np.ndarray, confidence: float,
              shift: np.ndarray) -> np.ndarray:
        """The sigma whose interval has the log half-width sqrt(h^2 + shift^2), h the half-width at `sigma`: a recipe
        with a new substance (predict) also carries the shift of its prediction that the substance's vector being
        new causes, taken as independent of the calibrated error. A shift of 0 leaves sigma as it is."""
        lo, hi = self.interval(predicted_nm, sigma, seen, confidence)
        half = np.log(hi / lo) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            factor = np.where(half > 0, np.sqrt(half ** 2 + np.asarray(shift) ** 2) / half, 1.0)
        return sigma * np.where(np.isfinite(factor), factor, 1.0)

    def cdf(self, predicted_nm: np.ndarray, sigma: np.ndarray, seen: np.ndarray,
            size_nm: np.ndarray | float) -> np.ndarray:
        """P(size <= size_nm) under the conformal predictive distribution of each recipe."""
        system = ConformalPredictiveSystem().fit(self.log_residuals, sigmas=self.sigmas, bins=self.bins)
        size_nm = np.broadcast_to(np.asarray(size_nm, np.float64), np.shape(predicted_nm))
        with np.errstate(divide="ignore"):
            log_size = np.log(size_nm)
        return system.predict_p(np.log(predicted_nm), log_size, sigmas=sigma, bins=self.bins_of(seen),
                                smoothing=False)

    def p_within(self, predicted_nm: np.ndarray, sigma: np.ndarray, seen: np.ndarray, target_nm: float,
                 tolerance_nm: float) -> np.ndarray:
        """P(|size - target| <= tolerance) under the conformal predictive distribution."""
        high = self.cdf(predicted_nm, sigma, seen, target_nm + tolerance_nm)
        low = self.cdf(predicted_nm, sigma, seen, max(target_nm - tolerance_nm, 0.0))
        return np.clip(high - low, 0.0, 1.0)

    # ---- state: lists and numbers, for a checkpoint (torch.load(weights_only=True)) and a fold record (JSON) -------

    def to_state(self) -> dict:
        return {"log_residuals": self.log_residuals.tolist(), "sigmas": self.sigmas.tolist(),
                "bins": self.bins.astype(int).tolist(), "coefficients": self.coefficients.tolist(),
                "sigma_range": self.sigma_range.tolist(), "mondrian": self.mondrian}

    @classmethod
    def from_state(cls, state: dict) -> "SizeCalibration":
        return cls(np.asarray(state["log_residuals"], np.float64), np.asarray(state["sigmas"], np.float64),
                   np.asarray(state["bins"], np.int64), np.asarray(state["coefficients"], np.float64),
                   np.asarray(state["sigma_range"], np.float64), bool(state["mondrian"]))


@dataclass(frozen=True)
class ShapeCalibration:
    scores: np.ndarray  # 1 - p(true shape) of the calibration rows

    @classmethod
    def fit(cls, probabilities: np.ndarray, true_shape: np.ndarray) -> "ShapeCalibration":
        return cls(1.0 - probabilities[np.arange(len(true_shape)), true_shape])

    @classmethod
    def pool(cls, calibrations: list["ShapeCalibration"]) -> "ShapeCalibration":
        return cls(np.concatenate([c.scores for c in calibrations]))

    def sets(self, probabilities: np.ndarray, confidence: float) -> np.ndarray:
        """(rows, shapes) bool: the shapes in each recipe's prediction set at `confidence`."""
        classifier = ConformalClassifier().fit(self.scores)
        return classifier.predict_set(1.0 - probabilities, confidence=confidence, smoothing=False).astype(bool)

    def to_state(self) -> dict:
        return {"scores": self.scores.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> "ShapeCalibration":
        return cls(np.asarray(state["scores"], np.float64))


def set_labels(inside: np.ndarray, probabilities: np.ndarray, names: list[str]) -> list[str]:
    """'sphere|cube' for each row of a (rows, shapes) set matrix, the most probable shape first."""
    order = np.argsort(-probabilities, axis=1, kind="stable")
    return ["|".join(names[k] for k in row_order if row_inside[k]) for row_order, row_inside in zip(order, inside)]


@dataclass(frozen=True)
class FoldCalibration:
    """A fold's calibration, made from rows its model did not train on: for size the calibrator, the plain baseline
    on the same rows (for comparison only) and the training rows' series (seen, proximity); for shape the set
    calibrator."""
    size: SizeCalibration | None = None
    baseline: SizeCalibration | None = None
    siblings: Siblings | None = None
    shape: ShapeCalibration | None = None

    def size_difficulty(self, table: pd.DataFrame, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(seen, sigma) of each recipe of `table`, its model's member spread given."""
        seen, proximity = self.siblings.proximity(table)
        return seen, self.size.sigma(difficulty_features(spread, proximity), seen)

    def size_outputs(self, table: pd.DataFrame, predicted_nm: np.ndarray, spread: np.ndarray,
                     confidence: float) -> dict[str, np.ndarray]:
        """The interval (lo, hi), sigma and series category of each recipe, and the baseline's interval."""
        seen, sigma = self.size_difficulty(table, spread)
        lo, hi = self.size.interval(predicted_nm, sigma, seen, confidence)
        base_lo, base_hi = self.baseline.interval(predicted_nm, np.ones(len(seen)), seen, confidence)
        return {"lo": lo, "hi": hi, "sigma": sigma, "seen": seen, "baseline_lo": base_lo, "baseline_hi": base_hi}

    def to_state(self, with_siblings: bool = True) -> dict:
        """Checkpoint state; `with_siblings=False` for the fold record (JSON): the calibration rows only."""
        if self.shape is not None:
            return {"shape": self.shape.to_state()}
        state = {"size": self.size.to_state(), "baseline": self.baseline.to_state()}
        return {**state, "siblings": self.siblings.to_state()} if with_siblings else state

    @classmethod
    def from_state(cls, state: dict) -> "FoldCalibration":
        if "shape" in state:
            return cls(shape=ShapeCalibration.from_state(state["shape"]))
        siblings = Siblings.from_state(state["siblings"]) if "siblings" in state else None
        return cls(SizeCalibration.from_state(state["size"]), SizeCalibration.from_state(state["baseline"]), siblings)


def shift_quantile(shifts: np.ndarray, confidence: float) -> float:
    """The conformal quantile of |shift| at `confidence`: the ceil((n + 1) confidence)-th smallest of n values (the
    largest when there are too few)."""
    ordered = np.sort(np.abs(np.asarray(shifts, np.float64)))
    rank = min(int(np.ceil((len(ordered) + 1) * confidence)), len(ordered))
    return float(ordered[rank - 1]) if len(ordered) else 0.0


def coverage(true: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict[str, float]:
    """Share of true sizes inside [lo, hi] and the mean width (nm)."""
    inside = (true >= lo) & (true <= hi)
    return {"coverage": float(inside.mean()) if len(inside) else float("nan"),
            "mean_width_nm": float((hi - lo).mean()) if len(inside) else float("nan"), "rows": int(len(inside))}


def set_coverage(true: np.ndarray, inside: np.ndarray) -> dict[str, float]:
    """Share of true shapes inside their prediction set and the mean set size."""
    return {"set_coverage": float(inside[np.arange(len(true)), true].mean()),
            "mean_set_size": float(inside.sum(axis=1).mean()), "rows": int(len(true))}
