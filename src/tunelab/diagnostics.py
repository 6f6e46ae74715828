"""Overfitting diagnostics from a run's history: warnings in words, with the usual remedies."""
from __future__ import annotations

from typing import Any

REMEDIES = ("more training data, a higher train.dropout, a higher train.weight_decay, early stopping "
            "(train.early_stopping.patience) or fewer train.epochs")
GAP = 0.10  # a train/validation gap of a 0–1 metric above this is worth a warning (10 points of chrF, BLEU)
RELATIVE_GAP = 0.25  # errors (loss, perplexity, mse) have no fixed scale: validation 25% above training
RISING = 2  # validation loss rising this many evaluations in a row while training loss falls


def overfitting_warnings(history: list[dict[str, Any]], metric: str, train_value: float | None,
                         validation_value: float | None, stopped_early: bool, lower_is_better: bool,
                         scale: float = 1.0) -> list[str]:
    """`scale` is the metric's full scale where higher is better: 1, or 100 for chrF and BLEU."""
    warnings = []
    evals = [h for h in history if "validation_loss" in h]
    train_losses = _train_loss_per_epoch(history)
    rises = 0
    for prev, cur in zip(evals, evals[1:]):
        falling = train_losses.get(cur["epoch"], 0) < train_losses.get(prev["epoch"], 0)
        rises = rises + 1 if cur["validation_loss"] > prev["validation_loss"] and falling else 0
        if rises >= RISING:
            warnings.append(f"overfitting: validation loss rose for {rises} evaluations in a row (to "
                            f"{cur['validation_loss']:.4f} at epoch {cur['epoch']}) while training loss fell; "
                            f"try {REMEDIES}")
            break
    if train_value is not None and validation_value is not None:
        gap = (validation_value - train_value) if lower_is_better else (train_value - validation_value)
        too_wide = gap > RELATIVE_GAP * abs(train_value) if lower_is_better else gap > GAP * scale
        if too_wide:
            warnings.append(f"overfitting: {metric} is {train_value:.3f} on training data but {validation_value:.3f} "
                            f"on validation (gap {gap:.3f}); try {REMEDIES}")
    if stopped_early:
        warnings.append("early stopping fired: the validation metric stopped improving, and the best epoch's "
                        "weights were restored")
    return warnings


def _train_loss_per_epoch(history: list[dict[str, Any]]) -> dict[int, float]:
    sums: dict[int, list[float]] = {}
    for h in history:
        if "train_loss" in h:
            epoch = int(h["epoch"] - 1e-9) + 1  # a step at 0.5 belongs to epoch 1
            sums.setdefault(epoch, []).append(h["train_loss"])
    return {e: sum(v) / len(v) for e, v in sums.items()}
