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


@pytest.mark.parametrize("multiple,width", [(1, 10), (8, 16)])
@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_as_the_tokenizer_does_on_either_side(tokenizer, tiny_csv, side, multiple, width):
    task = _task(tiny_csv)
    examples = [Example(t, None) for t in ["a", "a much longer text than the first one", "", "two words"]]
    features = task.encode(tokenizer, examples, max_length=11)  # the longest is 10 tokens
    assert all(f["input_ids"].dtype == np.int32 for f in features)
    tokenizer.padding_side = side
    try:
        ours = task.collate(tokenizer, features, multiple)
        theirs = tokenizer.pad([{k: v.tolist() for k, v in f.items()} for f in features], return_tensors="pt",
                               pad_to_multiple_of=None if multiple == 1 else multiple)
    finally:
        tokenizer.padding_side = "right"
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == torch.int64 and torch.equal(ours[key], theirs[key]), key
    assert ours["input_ids"].shape[1] == width


def test_a_batch_is_never_padded_past_the_models_longest_input(tokenizer, tiny_csv, monkeypatch):
    task = _task(tiny_csv)
    features = task.encode(tokenizer, [Example("word " * 30, None)], max_length=13)
    assert task.collate(tokenizer, features, 8)["input_ids"].shape[1] == 16
    monkeypatch.setattr(tokenizer, "model_max_length", 14)  # a model whose positions end at 14
    assert task.collate(tokenizer, features, 8)["input_ids"].shape[1] == 14
    monkeypatch.setattr(tokenizer, "model_max_length", 10)  # inputs already longer (max_length > model's): as they are
    assert task.collate(tokenizer, features, 8)["input_ids"].shape[1] == 13


@pytest.mark.parametrize("precision,widths", [("fp32", [3, 5, 7, 9]), ("bf16", [8, 8, 8, 16])])
def test_the_precision_decides_the_widths_of_training_and_evaluation_batches(tokenizer, tiny_csv, monkeypatch,
                                                                            precision, widths):
    """bf16 rounds widths up to a multiple of 8 (oneDNN caches a primitive per shape on a CPU; tensor cores on a
    GPU); fp32 pads each batch to its longest input only (the padding was only work there)."""
    task = _task(tiny_csv)
    examples = [Example("word " * n, None) for n in (1, 3, 5, 7)]  # 3, 5, 7 and 9 tokens with [CLS] and [SEP]
    seen = []
    monkeypatch.setattr(base, "predict_scores", lambda model, batches, *a, **k: seen.append(
        [batches.batch([i])["input_ids"].shape[1] for i in range(len(batches))]) or (None, None))
    task.outputs(None, tokenizer, examples, ["negative", "positive"], max_length=32, batch_size=4,
                 precision=precision, device=torch.device("cpu"), with_loss=False)
    assert seen == [widths]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_training_run_pads_its_batches_as_its_precision_asks(tiny_config, monkeypatch, tmp_path, precision):
    import random

    from tunelab.api import train
    from tunelab.training.batches import Batches
    rng = random.Random(0)  # texts of 1 to 12 words, so that batch widths vary
    csv = tmp_path / "lengths.csv"
    csv.write_text("text,label\n" + "".join(f"{' '.join(['good' if i % 2 else 'bad'] * rng.randint(1, 12))},"
                                            f"{'positive' if i % 2 else 'negative'}\n" for i in range(80)))
    widths, batch = [], Batches.batch
    monkeypatch.setattr(Batches, "batch", lambda self, idx: widths.append(
        (out := batch(self, idx))["input_ids"].shape[1]) or out)
    train(tiny_config("lora", data__source=str(csv), train__precision=precision, train__epochs=1), log=lambda _: None)
    assert widths and all(w <= 16 for w in widths)  # data.max_length 16
    if precision == "bf16":
        assert all(w % 8 == 0 for w in widths), widths
    else:
        assert any(w % 8 for w in widths), widths


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
