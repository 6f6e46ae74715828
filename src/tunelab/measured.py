"""How sure a comparison's figures are: bootstrap intervals of each method's main metric and paired intervals
of the differences between methods, on the validation and test splits.

Every method of a comparison predicts the same examples, so a difference is resampled in pairs: the same
resampled examples for both methods (`uncertainty.paired_difference`). With several training seeds a method's
figure is the mean over its seeds, and each resample recomputes that mean on the resampled examples.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .uncertainty import examples_to_resolve, paired_difference, percentile_interval

PREDICTIONS = {"validation": "validation_predictions.jsonl", "test": "predictions.jsonl"}

Statistic = Callable[[np.ndarray], float]


@dataclass
class Measured:
    """The resampling statistics of a comparison's finished methods, per split."""
    confidence: float
    resamples: int
    statistics: dict[str, dict[str, Statistic]] = field(default_factory=dict)  # split → method → statistic
    sizes: dict[str, int] = field(default_factory=dict)  # split → number of examples

    def interval(self, method: str, split: str) -> list[float] | None:
        statistic = self.statistics.get(split, {}).get(method)
        if statistic is None:
            return None
        lo, hi = percentile_interval(statistic, self.sizes[split], resamples=self.resamples,
                                     confidence=self.confidence)
        return [float(lo), float(hi)]

    def difference(self, method: str, versus: str, split: str) -> dict[str, Any] | None:
        """`method` − `versus` on the same resampled examples: {"versus", "value", "interval"}."""
        statistics = self.statistics.get(split, {})
        if statistics.get(method) is None or statistics.get(versus) is None:
            return None
        d = paired_difference(statistics[method], statistics[versus], self.sizes[split], resamples=self.resamples,
                              confidence=self.confidence)
        return {"versus": versus, "value": float(d["value"]), "interval": [float(v) for v in d["interval"]]}

    def to_resolve(self, difference: dict[str, Any], split: str = "validation") -> int | None:
        """How many examples the split would need for an interval as narrow as this difference is large."""
        lo, hi = difference["interval"]
        return examples_to_resolve(self.sizes[split], (hi - lo) / 2, difference["value"])


def measure(rows: list[dict[str, Any]], metric: str, task, confidence: float, resamples: int) -> Measured:
    """Statistics for every finished row whose runs saved per-example predictions the task can resample.

    A row without them (a run saved by an older tunelab, or a metric such as perplexity that is not a function
    of the predictions) simply has no interval."""
    out = Measured(confidence, resamples)
    for split, file in PREDICTIONS.items():
        found: dict[str, tuple[int, Statistic]] = {}
        for row in rows:
            if row["status"] == "ok":
                got = _statistic([Path(r["run_folder"]) for r in row.get("runs") or [row]], file, metric, task)
                if got is not None:
                    found[row["method"]] = got
        sizes = {n for n, _ in found.values()}
        if len(sizes) == 1:  # every method predicted the same examples: what pairing needs
            out.sizes[split] = sizes.pop()
            out.statistics[split] = {m: s for m, (_, s) in found.items()}
    return out


def _statistic(folders: list[Path], file: str, metric: str, task) -> tuple[int, Statistic] | None:
    """The metric of the mean over seeds, as a function of resampled example indices."""
    per_seed, sizes = [], set()
    for folder in folders:
        path = folder / file
        if not path.is_file():
            return None
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        labels = json.loads((folder / "metrics.json").read_text()).get("labels") or []
        statistic = task.resampled_metric(rows, metric, labels)
        if statistic is None:
            return None
        per_seed.append(statistic)
        sizes.add(len(rows))
    if len(sizes) != 1:
        return None
    if len(per_seed) == 1:
        return sizes.pop(), per_seed[0]
    return sizes.pop(), lambda idx: float(np.mean([s(idx) for s in per_seed]))
