"""Regression: one float target per text, trained with mean squared error."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from ..data import Example
from ..errors import DataError
from .base import Task, gold_in
from .registry import register


@register
class RegressionTask(Task):
    name = "regression"
    label_kind = "number"
    metric_names = ("mse", "mae", "r2", "pearson", "loss")
    default_metric = "mse"
    shown_metrics = ("mse", "r2")
    lower_is_better = frozenset({"loss", "mse", "mae"})

    def parse_label(self, value: Any, origin: str, column: str) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{origin}: label {value!r} in column {column!r} is not a number; regression needs "
                            f"numeric targets") from None
        if not math.isfinite(number):
            raise DataError(f"{origin}: label {value!r} is not a finite number")
        return number

    def auto_class(self):
        from transformers import AutoModelForSequenceClassification
        return AutoModelForSequenceClassification

    def model_kwargs(self, labels: list[str]) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression"}

    def targets(self, examples: list[Example], labels: list[str]) -> torch.Tensor:
        return torch.tensor([float(e.label) for e in examples], dtype=torch.float32)

    def predictions(self, scores: np.ndarray, labels: list[str]) -> list[float]:
        return [float(v) for v in scores.reshape(-1)]

    def metrics(self, scores: np.ndarray, examples: list[Example], labels: list[str]) -> dict[str, Any]:
        pred = scores.reshape(-1).astype(np.float64)
        gold = np.array([float(e.label) for e in examples])
        constant = np.std(pred) == 0 or np.std(gold) == 0
        return {
            "mse": float(mean_squared_error(gold, pred)),
            "mae": float(mean_absolute_error(gold, pred)),
            "r2": float(r2_score(gold, pred)) if len(gold) > 1 else 0.0,
            "pearson": 0.0 if constant else float(np.corrcoef(gold, pred)[0, 1]),
        }

    def resampled_metric(self, rows: list[dict], metric: str, labels: list[str]
                         ) -> Callable[[np.ndarray], float] | None:
        """mse, mae, r² and Pearson's r as `metrics` defines them, edge cases included, on the drawn rows."""
        if metric not in ("mse", "mae", "r2", "pearson") or not gold_in(rows, "label"):
            return None
        pred = np.array([float(r["prediction"]) for r in rows])
        gold = np.array([float(r["label"]) for r in rows])

        def statistic(idx: np.ndarray) -> float:
            p, g = pred[idx], gold[idx]
            if metric in ("mse", "mae"):
                return float(np.mean((g - p) ** 2 if metric == "mse" else np.abs(g - p)))
            gc = g - g.mean()
            if metric == "r2":
                if len(idx) < 2:
                    return 0.0  # as `metrics` reports it for one example
                residual, total = float(((g - p) ** 2).sum()), float(gc @ gc)
                # sklearn's r2_score on a constant gold: 1 where matched exactly, else 0
                return 1 - residual / total if total else float(residual == 0)
            pc = p - p.mean()
            spread = np.sqrt((pc @ pc) * (gc @ gc))
            constant = np.ptp(p) == 0 or np.ptp(g) == 0 or spread == 0
            return 0.0 if constant else float(np.clip(pc @ gc / spread, -1, 1))
        return statistic
