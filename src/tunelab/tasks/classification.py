"""Single-label text classification over N labels, trained with cross-entropy."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from ..data import Example
from ..errors import DataError
from .base import Task, gold_in
from .registry import register


@register
class ClassificationTask(Task):
    name = "classification"
    label_kind = "class"
    stratified = True
    metric_names = ("f1", "accuracy", "precision", "recall", "loss")
    default_metric = "f1"
    shown_metrics = ("f1", "accuracy")

    def config_problems(self, cfg) -> list[str]:
        if cfg.data.labels is not None and len(set(cfg.data.labels)) < 2:
            return ["`data.labels` must list at least two labels"]
        return []

    def parse_label(self, value: Any, origin: str, column: str) -> str:
        # JSON gives 1, CSV gives "1": both mean the same label.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value).strip()

    def label_set(self, examples: list[Example], declared: list[Any] | None, where: str) -> list[str]:
        found = sorted({e.label for e in examples})
        fractions = [x for x in found if _is_fraction(x)]
        if declared is None and fractions and all(_is_number(x) for x in found):
            raise DataError(f"{where}: the labels are numbers with fractions ({', '.join(fractions[:3])}, …), which "
                            f"classification would treat as {len(found)} unrelated classes; use task: regression "
                            f"to predict the number, or give class names")
        if declared is None:
            if len(found) < 2:
                raise DataError(f"{where}: every example has the label {found[0]!r}; classification needs at "
                                f"least two classes")
            return found
        declared = [str(x) for x in declared]
        for e in examples:
            if e.label not in declared:
                raise DataError(f"{e.origin}: label {e.label!r} is not one of: {', '.join(declared)}; fix the "
                                f"label or add it to data.labels")
        return declared

    def check_splits(self, splits, source: str) -> None:
        if len({e.label for e in splits.train}) < 2:
            raise DataError(f"{source}: the train split holds a single class; add examples of the others")
        for part in (splits.validation, splits.test):
            for e in part:
                if e.label not in splits.labels:
                    raise DataError(f"{e.origin}: label {e.label!r} is not one of the training labels: "
                                    f"{', '.join(splits.labels)}; fix it or declare data.labels")

    def auto_class(self):
        from transformers import AutoModelForSequenceClassification
        return AutoModelForSequenceClassification

    def model_kwargs(self, labels: list[str]) -> dict[str, Any]:
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {label: i for i, label in enumerate(labels)},
                "problem_type": "single_label_classification"}

    def targets(self, examples: list[Example], labels: list[str]) -> torch.Tensor:
        index = {label: i for i, label in enumerate(labels)}
        return torch.tensor([index[e.label] for e in examples], dtype=torch.long)

    def predictions(self, scores: np.ndarray, labels: list[str]) -> list[str]:
        return [labels[i] for i in scores.argmax(axis=-1)]

    def metrics(self, scores: np.ndarray, examples: list[Example], labels: list[str]) -> dict[str, Any]:
        index = {label: i for i, label in enumerate(labels)}
        gold = np.array([index[e.label] for e in examples])
        pred = scores.argmax(axis=-1)
        ids = list(range(len(labels)))
        p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=ids, average="macro", zero_division=0)
        pc, rc, fc, support = precision_recall_fscore_support(gold, pred, labels=ids, zero_division=0)
        return {
            "accuracy": float(accuracy_score(gold, pred)),
            "precision": float(p), "recall": float(r), "f1": float(f),
            "per_class": {label: {"precision": float(pc[i]), "recall": float(rc[i]), "f1": float(fc[i]),
                                  "support": int(support[i])} for i, label in enumerate(labels)},
            "confusion_matrix": {"labels": labels,
                                 "matrix": confusion_matrix(gold, pred, labels=ids).tolist()},  # rows: gold
        }

    def resampled_metric(self, rows: list[dict], metric: str, labels: list[str]
                         ) -> Callable[[np.ndarray], float] | None:
        """Accuracy and macro precision/recall/F1 as `metrics` computes them (sklearn, zero_division=0, averaged
        over every label), from the confusion matrix of the drawn rows: one bincount per resample."""
        if metric not in ("accuracy", "precision", "recall", "f1") or not gold_in(rows, "label"):
            return None
        index, k = {label: i for i, label in enumerate(labels)}, len(labels)
        cells = np.array([index[r["label"]] * k + index[r["prediction"]] for r in rows])  # gold row, predicted column

        def statistic(idx: np.ndarray) -> float:
            matrix = np.bincount(cells[idx], minlength=k * k).reshape(k, k)
            hits = np.diag(matrix).astype(float)
            if metric == "accuracy":
                return float(hits.sum() / len(idx))
            # Per label: hits over predicted, over present, and F1 = 2·hits / (predicted + present), the harmonic mean
            # of the two; a label with no count to divide by scores 0, as zero_division=0 says.
            count = {"precision": matrix.sum(0), "recall": matrix.sum(1), "f1": (matrix.sum(0) + matrix.sum(1)) / 2}
            return float(np.divide(hits, count[metric], out=np.zeros(k), where=count[metric] > 0).mean())
        return statistic


def _is_number(label: str) -> bool:
    try:
        float(label)
    except ValueError:
        return False
    return True


def _is_fraction(label: str) -> bool:
    return _is_number(label) and not float(label).is_integer()
