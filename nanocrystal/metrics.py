"""Scores of docs/protocol.md section 7, all from scikit-learn."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, mean_absolute_error,
                             mean_absolute_percentage_error, mean_squared_error, precision_recall_fscore_support,
                             r2_score)

SIZE_METRICS = ("mae", "mse", "rmse", "mape", "r2")
SHAPE_METRICS = ("accuracy", "f1", "recall", "precision")


def size_metrics(true_nm: np.ndarray, pred_nm: np.ndarray) -> dict[str, float]:
    mse = mean_squared_error(true_nm, pred_nm)
    return {
        "mae": float(mean_absolute_error(true_nm, pred_nm)),
        "mse": float(mse),
        "rmse": float(np.sqrt(mse)),
        "mape": float(mean_absolute_percentage_error(true_nm, pred_nm)),
        "r2": float(r2_score(true_nm, pred_nm)),
    }


def shape_metrics(true_shape: np.ndarray, pred_shape: np.ndarray, n_shapes: int) -> dict:
    """Accuracy and weighted precision/recall/F1 over the shape classes (failure excluded by the caller)."""
    precision, recall, f1, _ = precision_recall_fscore_support(true_shape, pred_shape, average="weighted",
                                                               zero_division=0)
    return {
        "accuracy": float(accuracy_score(true_shape, pred_shape)),
        "f1": float(f1),
        "recall": float(recall),
        "precision": float(precision),
        "confusion": confusion_matrix(true_shape, pred_shape, labels=list(range(n_shapes))).tolist(),
    }


def mean_metrics(per_fold: list[dict], names: tuple[str, ...]) -> dict[str, float]:
    return {name: float(np.mean([fold[name] for fold in per_fold])) for name in names}
