"""Which training examples a decoder's prompt shows as demonstrations, and in which order.

`balanced` takes k examples of each class, `random` k × classes from all, `nearest` the k × classes
most similar to the input (cosine similarity of mean-pooled embeddings, as in Liu et al. 2022,
"What Makes Good In-Context Examples for GPT-3?"). The order is a seeded shuffle, or
`similar_last`: the demonstration most similar to the input right before it, where a small model
attends most. Demonstrations that do not depend on the input are chosen once, so every input's
prompt starts the same and that shared beginning runs through the model once.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import numpy as np

from .. import models
from .prompt_encoder import EmbeddingScorer

Demo = tuple[str, str]  # (text, label)


class Demonstrations:
    def __init__(self, pool: list[Demo], labels: list[str], options, embed_self: Callable, max_length: int,
                 batch_size: int, fixed: dict[int, list[Demo]] | None = None):
        self.pool, self.labels, self.options = pool, labels, options
        self.fixed = dict(fixed or {})  # shots → demonstrations shared by every input
        self._embed_self, self.max_length, self.batch_size = embed_self, max_length, batch_size
        self._embeddings: dict[str, np.ndarray] = {}
        self._embedder: Callable | None = None

    @classmethod
    def draw(cls, train, labels: list[str], options, **kwargs) -> Demonstrations:
        """A seeded shuffle of (at most `demonstration_pool`) training examples to choose from."""
        rng = random.Random(options.seed)
        pool = [(e.text, e.label) for e in rng.sample(train, min(len(train), options.demonstration_pool))]
        return cls(pool, labels, options, **kwargs)

    def per_input(self, shots: int) -> bool:
        """Whether the demonstrations depend on the input (then no prompt beginning is shared)."""
        return bool(shots) and shots not in self.fixed and (
            self.options.demonstrations == "nearest" or self.options.order == "similar_last")

    def prefetch(self, texts: list[str]) -> None:
        """Embed many inputs in batches, before they are looked up one by one."""
        self._embed(texts)

    def choose(self, shots: int, text: str) -> list[Demo]:
        if not shots:
            return []
        if shots in self.fixed:
            return self.fixed[shots]
        o, n = self.options, shots * len(self.labels)
        if o.demonstrations == "balanced":
            chosen = [d for label in self.labels for d in [d for d in self.pool if d[1] == label][:shots]]
        elif o.demonstrations == "random":
            chosen = self.pool[:n]  # the pool is a seeded shuffle already
        else:
            chosen = [self.pool[i] for i in np.argsort(-self.similarity(text), kind="stable")[:n]]
        if o.order == "similar_last":
            rank = dict(zip(self.pool, self.similarity(text)))
            return sorted(chosen, key=lambda d: rank[d])
        random.Random(f"{o.seed}-{shots}").shuffle(chosen)  # a string seed is stable across processes
        if not self.per_input(shots):
            self.fixed[shots] = chosen
        return chosen

    def similarity(self, text: str) -> np.ndarray:
        """Cosine similarity of `text` to every pool example."""
        return self._embed([t for t, _ in self.pool]) @ self._embed([text])[0]

    def _embed(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._embeddings]
        if missing:
            self._embeddings.update(zip(missing, self._embedding_model()(missing)))
        return np.stack([self._embeddings[t] for t in texts])

    def _embedding_model(self) -> Callable:
        if self._embedder is None:
            if self.options.embedder == "self":
                self._embedder = self._embed_self
            else:  # a sentence encoder: trained for similarity, and far cheaper than the decoder
                from transformers import AutoModel
                folder = Path(models.resolve(self.options.embedder))
                encoder = models.load_model(AutoModel, folder)[0]
                self._embedder = EmbeddingScorer(encoder, models.load_tokenizer(folder), self.max_length,
                                                 self.batch_size).embed
        return self._embedder
