"""Every registered method × every task it supports × both model families (encoder, decoder; generation: decoder;
extractive QA: encoder)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tunelab.api import evaluate, train
from tunelab.settings import load_config
from tunelab.data import load_splits
from tunelab.methods import METHODS
from tunelab.methods.base import snapshot
from tunelab.pipeline import fit, prepare, reload
from tunelab.tasks import TASKS

# The matrix is written out so that a newly registered method fails here until it is added.
MATRIX = {
    "full": ["classification", "regression", "extractive_qa", "generation"],
    "lora": ["classification", "regression", "extractive_qa", "generation"],
    "ia3": ["classification", "regression", "extractive_qa", "generation"],
    "adapter": ["classification", "regression", "extractive_qa", "generation"],
    "prompt": ["classification", "generation"],
}
ONLY_FAMILY = {"generation": "llama", "extractive_qa": "bert"}
CASES = [(m, t, f) for m, tasks in MATRIX.items() for t in tasks for f in ("bert", "llama")
         if ONLY_FAMILY.get(t, f) == f]


def test_every_registered_method_is_in_the_matrix():
    assert set(MATRIX) == set(METHODS.names())
    for name, tasks in MATRIX.items():
        assert set(tasks) == set(METHODS.get(name).task_names()), name


def _config(tiny_config, method, task, family, request, tiny_regression_csv):
    if task == "generation":
        return load_config(request.getfixturevalue("tiny_generation_config")(method))
    if task == "extractive_qa":
        return load_config(request.getfixturevalue("tiny_qa_config")(method))
    model = request.getfixturevalue(f"tiny_{family}")
    cfg = tiny_config(method, model)
    if task == "regression":
        cfg["task"] = "regression"
        cfg["data"]["source"] = str(tiny_regression_csv)
    if method == "prompt":
        cfg["method"]["shots"] = [0, 4]
    return load_config(cfg)


@pytest.mark.parametrize("method,task,family", CASES)
def test_trains_only_what_it_should(method, task, family, tiny_config, request, tiny_regression_csv):
    cfg = _config(tiny_config, method, task, family, request, tiny_regression_csv)
    splits = load_splits(cfg.data, TASKS.get(task))
    adapted = prepare(cfg, splits, log=lambda _: None)
    if adapted.method.family == "prompt":  # nothing trains: the model only scores
        fit(cfg, splits, log=lambda _: None, adapted=adapted)
        assert adapted.parameters()["trainable"] == 0 and adapted.state is None
        return
    before = snapshot(adapted.model)
    fit(cfg, splits, log=lambda _: None, adapted=adapted)
    trainable = {n for n, p in adapted.model.named_parameters() if p.requires_grad}
    assert trainable, "nothing was trained"
    for name, param in adapted.model.named_parameters():
        if name in trainable:
            continue
        assert torch.equal(before[name], param), f"frozen parameter {name} changed"
    changed = [n for n in trainable if not torch.equal(before[n], dict(adapted.model.named_parameters())[n])]
    # LoRA's A matrices get no gradient while B is still zero, so require most, not all, to move.
    assert len(changed) >= 0.5 * len(trainable), f"only {len(changed)} of {len(trainable)} trainable tensors changed"
    head = [n for n in changed if any(h in n for h in ("classifier", "score", "lm_head", "qa_outputs"))]
    assert head, "the task head was not trained"


@pytest.mark.parametrize("method,task,family", CASES)
def test_save_load_gives_equal_predictions(method, task, family, tiny_config, request, tiny_regression_csv):
    cfg = _config(tiny_config, method, task, family, request, tiny_regression_csv)
    metrics = train(cfg, log=lambda _: None)
    folder = metrics["run_folder"]
    saved = [json.loads(line) for line in open(f"{folder}/predictions.jsonl")]
    splits = load_splits(cfg.data, TASKS.get(task))
    adapted = reload(cfg, __import__("pathlib").Path(folder), splits.labels)
    scores, _ = adapted.scores(splits.test)
    if task in ("generation", "extractive_qa"):
        assert scores.texts == [row["prediction"] for row in saved]
    elif task == "classification":
        saved_scores = np.array([[row["scores"][label] for label in splits.labels] for row in saved])
        np.testing.assert_allclose(scores, saved_scores, atol=1e-5)
    else:
        np.testing.assert_allclose(scores.reshape(-1), [row["prediction"] for row in saved], atol=1e-5)
    again = evaluate(folder)
    key = TASKS.get(task).default_metric
    assert again[key] == pytest.approx(metrics["test"][key], abs=1e-6)

