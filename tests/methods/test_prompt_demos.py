"""Choosing demonstrations: balanced, random, nearest; seeded order or the most similar last."""
from __future__ import annotations

import numpy as np

from tunelab.data import Example
from tunelab.methods.prompt import PromptOptions
from tunelab.methods.prompt_demos import Demonstrations

# Texts on a circle: similarity is the cosine of the angle between them, easy to check by hand.
ANGLES = {"n0": 0, "n1": 10, "n2": 20, "p0": 90, "p1": 100, "p2": 170, "query": 14}
LABELS = ["negative", "positive"]
TRAIN = [Example(t, "negative" if t.startswith("n") else "positive") for t in ANGLES if t != "query"]


def _embed(texts: list[str]) -> np.ndarray:
    _embed.calls.append(list(texts))
    rad = np.radians([ANGLES[t] for t in texts])
    return np.stack([np.cos(rad), np.sin(rad)], 1)


def _demos(**options) -> Demonstrations:
    _embed.calls = []
    opts = PromptOptions(**{"embedder": "self", **options})
    return Demonstrations.draw(TRAIN, LABELS, opts, embed_self=_embed, max_length=16, batch_size=8)


def test_balanced_takes_shots_of_each_class_once_for_every_input():
    demos = _demos(demonstrations="balanced")
    chosen = demos.choose(2, "query")
    assert sorted(label for _, label in chosen) == ["negative", "negative", "positive", "positive"]
    assert not demos.per_input(2) and demos.choose(2, "anything else") == chosen
    assert _embed.calls == []  # nothing to compare: no embeddings computed
    assert demos.choose(0, "query") == []


def test_random_takes_shots_times_classes_from_the_seeded_pool():
    demos = _demos(demonstrations="random")
    first = demos.choose(1, "query")
    assert sorted(first) == sorted(demos.pool[:2])  # the pool is a seeded shuffle of the training split
    assert first == _demos(demonstrations="random").choose(1, "query")


def test_nearest_takes_the_most_similar_and_similar_last_orders_them():
    demos = _demos(demonstrations="nearest", order="similar_last")
    assert demos.per_input(1)
    demos.prefetch(["query"])
    # 2 labels × 1 shot: the two closest to 14° are n1 (4° away) and n2 (6°), whatever their labels; n1 last.
    assert demos.choose(1, "query") == [("n2", "negative"), ("n1", "negative")]
    np.testing.assert_allclose(demos.similarity("query")[[t for t, _ in demos.pool].index("p0")],
                               np.cos(np.radians(76)))
    assert sum(len(c) for c in _embed.calls) == len(ANGLES)  # each text embedded once


def test_reloaded_demonstrations_are_used_as_saved():
    saved = [("p2", "positive"), ("n0", "negative")]
    demos = Demonstrations([], LABELS, PromptOptions(demonstrations="nearest"), embed_self=_embed, max_length=16,
                           batch_size=8, fixed={1: saved})
    assert not demos.per_input(1) and demos.choose(1, "query") == saved
