"""Every task's `resampled_metric`: recomputed from predictions.jsonl rows at any index array, it gives what the
task's own `metrics` gives on the examples at those indices."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

from tunelab.data import Example
from tunelab.tasks import TASKS, Task
from tunelab.tasks.extractive_qa import Answers
from tunelab.tasks.generation import Generated
from tunelab.tasks.text_metrics import bleu, chrf
from tunelab.uncertainty import resample_indices

NOT_IN_ROWS = {"loss", "perplexity"}  # need per-example losses, which predictions.jsonl does not hold


@dataclass
class Case:
    outputs: Any
    examples: list[Example]
    labels: list[str]
    take: Callable[[Any, np.ndarray], Any]  # the outputs of the examples at an index array


def classification() -> Case:
    # "other" is neither gold nor predicted and "neutral" never predicted: macro averages still count them (as 0).
    labels = ["negative", "neutral", "positive", "other"]
    gold = ["negative", "negative", "positive", "positive", "neutral", "negative", "positive", "neutral", "positive"]
    pred = ["negative", "positive", "positive", "positive", "negative", "negative", "positive", "positive", "negative"]
    noise = np.random.default_rng(0).random((len(pred), len(labels))) * 0.1
    scores = np.eye(len(labels))[[labels.index(p) for p in pred]] + noise
    return Case(scores, [Example(f"text {i}", g) for i, g in enumerate(gold)], labels, lambda s, idx: s[idx])


def regression() -> Case:
    gold = [1.0, -1.0, 0.5, 2.0, 0.0, -0.5, 1.5, 3.0, 1.0]
    pred = np.array(gold) + np.random.default_rng(1).normal(scale=0.7, size=len(gold))
    return Case(pred.reshape(-1, 1), [Example(f"text {i}", g) for i, g in enumerate(gold)], [],
                lambda s, idx: s[idx])


def extractive_qa() -> Case:
    context = "Paris is the capital of France. The Seine flows through the city of Paris."
    cases = [  # (accepted answers, predicted span): exact, partial, right under a second answer, unanswerable
        (["Paris"], "Paris"), (["the Seine"], "Seine flows"), (["France", "the French Republic"], "French Republic"),
        (["Paris"], "the city of Paris"), ([], ""), ([], "France"), (["Seine"], ""), (["capital"], "capital"),
    ]
    examples = [Example(f"question {i}", answers[0] if answers else None, context,
                        answers=[(a, max(context.find(a), 0)) for a in answers])
                for i, (answers, _) in enumerate(cases)]
    answers = Answers([p for _, p in cases], [float(i) for i in range(len(cases))])
    return Case(answers, examples, [],
                lambda a, idx: Answers([a.texts[i] for i in idx], [a.scores[i] for i in idx]))


def generation() -> Case:
    pairs = [("The cat sat on the mat.", "The cat sat on the mat."),
             ("A dog runs in the park.", "The dog is running in a park."),
             ("It is raining today.", "Today it rains."),
             ("He bought three apples and a pear.", "He bought 3 apples and one pear."),
             ("Good morning!", "Good evening!"),
             ("", "Nothing was generated here."),
             ("We will meet at noon near the old station.", "We meet at noon by the old station.")]
    examples = [Example(f"prompt {i}", ref) for i, (_, ref) in enumerate(pairs)]
    return Case(Generated([p for p, _ in pairs]), examples, [],
                lambda g, idx: Generated([g.texts[i] for i in idx]))


CASES = {"classification": classification, "regression": regression, "extractive_qa": extractive_qa,
         "generation": generation}


def rows_of(task: Task, case: Case) -> list[dict]:
    """The task's predictions.jsonl rows, through JSON as the file holds them."""
    return [json.loads(json.dumps(r)) for r in task.prediction_rows(case.examples, case.outputs, case.labels)]


def test_every_registered_task_has_a_case():
    assert sorted(CASES) == TASKS.names()


@pytest.mark.parametrize("name", TASKS.names())
def test_resampled_metric_equals_the_tasks_metrics_on_the_drawn_examples(name):
    task, case = TASKS.get(name), CASES[name]()
    n = len(case.examples)
    rows = rows_of(task, case)
    every = task.metrics(case.outputs, case.examples, case.labels)
    reported = {k for k, v in every.items() if isinstance(v, float)} - NOT_IN_ROWS
    assert set(task.metric_names) - NOT_IN_ROWS <= reported
    # The full set, 20 resamples, then edge cases: one example n times, a single one, the fifth three times (in
    # extractive QA an unanswerable question: the has-answer parts are then undefined).
    draws = [np.arange(n), *resample_indices(n, resamples=20, seed=5), np.zeros(n, int), np.array([1]),
             np.array([4, 4, 4])]
    assert not np.array_equal(draws[1], draws[0])
    for metric in sorted(reported):
        statistic = task.resampled_metric(rows, metric, case.labels)
        assert statistic is not None, f"{name} cannot resample {metric}"
        values = []
        for idx in draws:
            expected = task.metrics(case.take(case.outputs, idx), [case.examples[i] for i in idx], case.labels)
            value = statistic(idx)
            if metric in expected:
                assert value == pytest.approx(expected[metric], abs=1e-9), f"{name} {metric} at {idx.tolist()}"
            elif metric.startswith("has_answer_") and any(case.examples[i].answers for i in idx):
                # `metrics` gives the v2 parts only when an unanswerable question was drawn; without one, every
                # drawn question has an answer and the has-answer part is the whole
                assert value == pytest.approx(expected[metric.removeprefix("has_answer_")], abs=1e-9)
            else:  # no question of the part's kind drawn: undefined
                assert math.isnan(value)
            values.append(value)
        assert values[0] == pytest.approx(every[metric], abs=1e-9)
        # Every case has wrong predictions, so resamples of it must not all score like the full set.
        assert any(v != pytest.approx(values[0]) for v in values[1:21] if not math.isnan(v)), metric


def test_generation_chrf_and_bleu_are_sacrebleus_corpus_scores():
    task, case = TASKS.get("generation"), generation()
    rows = rows_of(task, case)
    predictions, references = case.outputs.texts, [e.label for e in case.examples]
    every = np.arange(len(rows))
    assert task.resampled_metric(rows, "chrf", [])(every) == pytest.approx(chrf(predictions, references), abs=1e-9)
    assert task.resampled_metric(rows, "bleu", [])(every) == pytest.approx(bleu(predictions, references), abs=1e-9)
    # Corpus-level, not a mean of sentence scores: the two halves' scores do not average to the whole's.
    halves = [np.arange(0, 4), np.arange(4, len(rows))]
    chrf_of = task.resampled_metric(rows, "chrf", [])
    assert (chrf_of(halves[0]) + chrf_of(halves[1])) / 2 != pytest.approx(chrf_of(every), abs=0.1)
    twice = np.concatenate([every, every])  # the same corpus twice: the same n-gram ratios
    assert chrf_of(twice) == pytest.approx(chrf_of(every), abs=1e-9)


def test_regression_edge_cases_follow_metrics():
    task, case = TASKS.get("regression"), regression()
    rows = rows_of(task, case)
    same = np.array([0, 0, 0])  # one example drawn three times: constant gold and prediction
    assert task.resampled_metric(rows, "pearson", [])(same) == 0.0
    assert task.resampled_metric(rows, "r2", [])(same) == 0.0  # constant gold, imperfect prediction
    assert task.resampled_metric(rows, "r2", [])(np.array([2])) == 0.0  # one example


@pytest.mark.parametrize("name", TASKS.names())
def test_metrics_rows_cannot_give_are_none(name):
    task, case = TASKS.get(name), CASES[name]()
    rows = rows_of(task, case)
    for metric in ("loss", "perplexity", "no_such_metric"):
        assert task.resampled_metric(rows, metric, case.labels) is None
    gold = {"classification": "label", "regression": "label", "extractive_qa": "answers", "generation": "reference"}
    unlabelled = [{k: v for k, v in r.items() if k != gold[name]} for r in rows]
    assert task.resampled_metric(unlabelled, task.default_metric, case.labels) is None
    assert task.resampled_metric([], task.default_metric, case.labels) is None


def test_qa_parts_absent_from_the_rows_are_none():
    task = TASKS.get("extractive_qa")
    answered = [{"prediction": "Paris", "answers": ["Paris"]}, {"prediction": "x", "answers": ["y"]}]
    assert task.resampled_metric(answered, "f1", [])(np.arange(2)) == 0.5
    assert task.resampled_metric(answered, "no_answer_accuracy", []) is None
    unanswerable = [{"prediction": "", "answers": []}, {"prediction": "x", "answers": []}]
    assert task.resampled_metric(unanswerable, "no_answer_accuracy", [])(np.arange(2)) == 0.5
    assert task.resampled_metric(unanswerable, "has_answer_f1", []) is None


def test_the_base_task_resamples_nothing():
    assert Task().resampled_metric([{"prediction": 1, "label": 1}], "accuracy", []) is None
