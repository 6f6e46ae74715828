"""The shared `Task.encode`/`collate` of classification and regression: compact features, batches exactly as
`tokenizer.pad` would make them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tunelab import models
from tunelab.data import Example
from tunelab.settings import load_config
from tunelab.tasks import task_for
from tunelab.tasks import base


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer(models.resolve("minilm"))


def _task(tiny_csv):
    return task_for(load_config({"task": "classification", "model": "minilm", "data": {"source": str(tiny_csv)}}))


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_as_the_tokenizer_does_on_either_side(tokenizer, tiny_csv, side):
    task = _task(tiny_csv)
    examples = [Example(t, None) for t in ["a", "a much longer text than the first one", "", "two words"]]
    features = task.encode(tokenizer, examples, max_length=11)  # the longest, 10 tokens, is padded to 16
    assert all(f["input_ids"].dtype == np.int32 for f in features)
    tokenizer.padding_side = side
    try:
        ours = task.collate(tokenizer, features)
        theirs = tokenizer.pad([{k: v.tolist() for k, v in f.items()} for f in features], return_tensors="pt",
                               pad_to_multiple_of=base.PAD_TO_MULTIPLE_OF)
    finally:
        tokenizer.padding_side = "right"
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == torch.int64 and torch.equal(ours[key], theirs[key]), key
    assert ours["input_ids"].shape[1] == 16


def test_a_batch_is_never_padded_past_the_models_longest_input(tokenizer, tiny_csv, monkeypatch):
    task = _task(tiny_csv)
    features = task.encode(tokenizer, [Example("word " * 30, None)], max_length=13)
    assert task.collate(tokenizer, features)["input_ids"].shape[1] == 16
    monkeypatch.setattr(tokenizer, "model_max_length", 14)  # a model whose positions end at 14
    assert task.collate(tokenizer, features)["input_ids"].shape[1] == 14
    monkeypatch.setattr(tokenizer, "model_max_length", 10)  # inputs already longer (max_length > model's): as they are
    assert task.collate(tokenizer, features)["input_ids"].shape[1] == 13


def test_encode_in_chunks_gives_the_features_of_one_call(tokenizer, tiny_csv, monkeypatch):
    task = _task(tiny_csv)
    examples = [Example(f"review number {i} " * (i % 5 + 1), None) for i in range(25)]
    whole = task.encode(tokenizer, examples, max_length=16)
    monkeypatch.setattr(base, "ENCODE_CHUNK", 7)  # 4 chunks, the last one short
    chunked = task.encode(tokenizer, examples, max_length=16)
    assert len(chunked) == 25
    for a, b in zip(whole, chunked):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    pairs = [Example("premise", None, text_pair=f"hypothesis {i}") for i in range(9)]
    assert [f["token_type_ids"].max() for f in task.encode(tokenizer, pairs, 16)] == [1] * 9
