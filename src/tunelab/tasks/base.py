"""What a task defines: how examples become model inputs and targets, and how scores become
predictions and metrics. Methods never look inside a task, and tasks never know the method."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from ..data import Example


class Task:
    name: ClassVar[str]
    label_kind: ClassVar[str]  # "class" or "number"
    required_columns: ClassVar[tuple[str, ...]] = ("text", "label")
    metric_names: ClassVar[tuple[str, ...]]
    default_metric: ClassVar[str]
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss"})

    def auto_class(self):
        raise NotImplementedError

    def model_kwargs(self, labels: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def targets(self, examples: list[Example], labels: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def predictions(self, scores: np.ndarray, labels: list[str]) -> list[Any]:
        raise NotImplementedError

    def metrics(self, scores: np.ndarray, examples: list[Example], labels: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def better(self, metric: str, new: float, old: float | None) -> bool:
        if old is None:
            return True
        return new < old if metric in self.lower_is_better else new > old

    def encode(self, tokenizer, examples: list[Example], max_length: int) -> list[dict[str, list[int]]]:
        """Token ids per example, unpadded: batches are padded to their own longest input."""
        texts = [e.text for e in examples]
        pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(texts))]
