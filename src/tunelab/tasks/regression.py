"""Regression: one float target per text, trained with mean squared error."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from ..data import Example
from .base import Task


class RegressionTask(Task):
    name = "regression"
    label_kind = "number"
    metric_names = ("mse", "mae", "r2", "pearson", "loss")
    default_metric = "mse"
    shown_metrics = ("mse", "r2")
    lower_is_better = frozenset({"loss", "mse", "mae"})

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
