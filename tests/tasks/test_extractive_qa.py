"""Extractive QA: windows over long contexts, answers mapped back through offsets, SQuAD metrics, end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tunelab import models
from tunelab.api import predict, train
from tunelab.settings import load_config
from tunelab.data import DATASETS, Example
from tunelab.errors import DataError
from tunelab.tasks import TASKS, task_for
from tunelab.tasks.extractive_qa import (CLS, Answers, ExtractiveQAOptions, ExtractiveQATask, answer_tokens, best_span,
                                        squad_scores)
from tunelab.training.batches import Batches


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer(models.resolve("minilm"))


def qa(question: str, context: str, answer: str, occurrence: int = 0) -> Example:
    start = [i for i in range(len(context)) if context.startswith(answer, i)][occurrence]
    return Example(question, answer, context, "test", group=context, answers=[(answer, start)])


def oracle_logits(features: list[dict], width: int) -> np.ndarray:
    """Logits that point every window at its own target span (windows without the answer at [CLS])."""
    logits = np.zeros((len(features), width, 2), dtype=np.float32)
    for i, f in enumerate(features):
        logits[i, f["start_positions"], 0] = logits[i, f["end_positions"], 1] = 10.0
    return logits


def test_registered_with_its_peft_type_and_default_metric():
    task = TASKS.get("extractive_qa")
    assert task.peft_task_type == "QUESTION_ANS" and task.default_metric == "f1"
    assert task.auto_class().__name__ == "AutoModelForQuestionAnswering"


def test_windows_map_offsets_back_to_the_exact_answer_text(tokenizer):
    """Every question of the built-in dataset, at max_length 128: the target tokens decode to the answer."""
    examples = DATASETS.get("tunelab_qa").load()
    task = ExtractiveQATask(ExtractiveQAOptions(doc_stride=32, max_answer_length=30))
    features = task.encode(tokenizer, examples, 128)
    windows = np.bincount([f["example"] for f in features], minlength=len(examples))
    assert windows.min() == 1 and windows.max() >= 3, "the long passages must need several windows"
    assert all(len(f["input_ids"]) <= 128 for f in features)
    answers = task.answers(examples, features, oracle_logits(features, 128))
    assert answers.texts == [e.answers[0][0] for e in examples]
    # A window that does not hold the answer is trained to point at [CLS].
    assert any(f["start_positions"] == f["end_positions"] == CLS for f in features)


def test_an_answer_cut_by_a_window_edge_is_found_in_the_next_window(tokenizer):
    context = " ".join(["red"] * 13 + ["Harbour", "Grey"] + ["blue"] * 27)  # one token per word
    example = qa("which tea ?", context, "Harbour Grey")
    question_tokens = len(tokenizer("which tea ?", add_special_tokens=False)["input_ids"])
    room = 20 - question_tokens - 3  # context tokens per window of max_length 20
    task = ExtractiveQATask(ExtractiveQAOptions(doc_stride=6, max_answer_length=5))
    features = task.encode(tokenizer, [example], 20)
    first = features[0]["offsets"]
    last_char = max(o[1] for o in first if o is not None)
    start = context.index("Harbour")
    assert start < last_char < start + len("Harbour Grey"), f"the first window ({room} tokens) must cut the answer"
    assert (features[0]["start_positions"], features[0]["end_positions"]) == (CLS, CLS)
    holding = [f for f in features if f["start_positions"] != CLS]
    assert holding, "no window holds the whole answer"
    # Only a later window knows the answer; the first window's best guess scores lower.
    logits = np.zeros((len(features), 20, 2), dtype=np.float32)
    for i, f in enumerate(features):
        if f["start_positions"] != CLS:
            logits[i, f["start_positions"], 0] = logits[i, f["end_positions"], 1] = 5.0
    logits[0, 9, :] = 3.0
    assert task.answers([example], features, logits).texts == ["Harbour Grey"]


def test_best_span_keeps_start_before_end_inside_the_context_and_short():
    offsets = [None, None, (0, 3), (4, 8), (9, 12), (13, 17), None]
    start = np.array([9, 0, 3, 1, 0, 6.5, 0], dtype=np.float32)  # [CLS] scores highest, then the last context token
    end = np.array([9, 0, 0, 7, 2, 0, 9], dtype=np.float32)       # the final [SEP] scores highest
    # Best pairs: [CLS] (18), (5, 6) over [SEP] (15.5), (5, 3) with start after end (13.5): all left out.
    assert best_span(start, end, offsets, max_answer_length=30) == (10.0, 0, 8)
    assert best_span(start, end, offsets, max_answer_length=1) == (8.0, 4, 8)
    assert best_span(np.zeros(9), np.zeros(9), offsets, 30)[1:] == (0, 3), "wider logits (batch padding) are ignored"
    assert best_span(start, end, [None] * 7, 30) is None


def test_answer_tokens_of_a_window():
    offsets = [None, (0, 3), (4, 11), (12, 16), None]
    assert answer_tokens(offsets, "Harbour Grey", 4) == (2, 3)
    assert answer_tokens(offsets, "Grey tea", 12) == (CLS, CLS)  # runs past the window's end


def test_squad_scores_golden_values():
    predictions = ["the Eiffel Tower", "Eiffel", "Paris, France", "nothing"]
    references = [["Eiffel Tower"], ["Eiffel Tower"], ["France", "Paris France"], ["tower"]]
    scores = squad_scores(predictions, references)
    # EM: 1 (articles dropped), 0, 1 (punctuation dropped, best reference), 0.
    assert scores["exact_match"] == pytest.approx(2 / 4)
    # F1: 1, 2·(1·0.5)/1.5 = 2/3, max(2/3, 1) = 1, 0.
    assert scores["f1"] == pytest.approx((1 + 2 / 3 + 1 + 0) / 4)


def test_squad_v2_scores_count_an_empty_answer_to_an_unanswerable_question():
    task = ExtractiveQATask(ExtractiveQAOptions(allow_unanswerable=True))
    examples = [qa("when ?", "It began in 1874.", "1874"), qa("who ?", "Ann met Bo.", "Bo"),
                Example("why ?", "", "It rained.", answers=[]), Example("how ?", "", "It rained.", answers=[])]
    scores = task.metrics(Answers(["1874", "", "", "rain"], [0.0] * 4), examples, [])
    # Answerable: EM 1, 0 (nothing said); unanswerable: "" right, "rain" wrong.
    assert scores["exact_match"] == pytest.approx(2 / 4) and scores["f1"] == pytest.approx(2 / 4)
    assert (scores["has_answer_exact_match"], scores["has_answer_f1"], scores["no_answer_accuracy"]) == (0.5, 0.5, 0.5)
    assert "no_answer_accuracy" not in task.metrics(Answers(["1874"], [0.0]), examples[:1], [])  # v1 data: as before


def test_an_unanswerable_question_points_every_window_at_cls_and_is_answered_with_nothing(tokenizer):
    context = " ".join(["red"] * 40)
    unanswerable = Example("which tea ?", "", context, "test", answers=[])
    answerable = qa("which tea ?", context + " Harbour Grey", "Harbour Grey")
    task = ExtractiveQATask(ExtractiveQAOptions(doc_stride=6, max_answer_length=5, allow_unanswerable=True))
    features = task.encode(tokenizer, [unanswerable, answerable], 24)
    mine = [f for f in features if f["example"] == 0]
    assert len(mine) > 1 and all(f["start_positions"] == f["end_positions"] == CLS for f in mine)
    # [CLS] scores 4 + 4 in every window; the answerable example's span scores 5 + 5 in the window holding it.
    logits = oracle_logits(features, 24)
    logits[:, CLS, :] = 4.0
    for i, f in enumerate(features):
        if f["start_positions"] != CLS:
            logits[i, f["start_positions"], 0] = logits[i, f["end_positions"], 1] = 5.0
    assert task.answers([unanswerable, answerable], features, logits).texts == ["", "Harbour Grey"]
    # The null score is the lowest over the example's windows: one window sure of a span (span 9 + 9 > null
    # 4 + 4 there) answers, although the other windows point at [CLS].
    first = next(i for i, f in enumerate(features) if f["example"] == 0)
    word = next(t for t, o in enumerate(features[first]["offsets"]) if o is not None)  # a context token, "red"
    logits[first, word, :] = 9.0
    answers = task.answers([unanswerable, answerable], features, logits)
    assert answers.texts[0] == "red" and answers.scores[0] == pytest.approx(18.0)
    # The threshold moves the line: ask the span to beat [CLS] by more than 11 (18 - 8 = 10 is not enough).
    strict = ExtractiveQATask(ExtractiveQAOptions(doc_stride=6, max_answer_length=5, allow_unanswerable=True,
                                                 null_score_diff_threshold=-11.0))
    assert strict.answers([unanswerable, answerable], features, logits).texts == ["", ""]
    # Without allow_unanswerable the best span is always the answer, as before.
    plain = ExtractiveQATask(ExtractiveQAOptions(doc_stride=6, max_answer_length=5))
    assert "" not in plain.answers([unanswerable, answerable], features, logits).texts


def test_collate_pads_on_the_right_and_keeps_the_targets(tokenizer):
    task = ExtractiveQATask(ExtractiveQAOptions(doc_stride=8))
    features = task.encode(tokenizer, [qa("who ?", "Ann met Bo.", "Bo"), qa("what ?", "A long day in the sun.", "sun")],
                           32)
    batch = task.collate(tokenizer, features)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"}
    short = int(np.argmin([len(f["input_ids"]) for f in features]))
    n = len(features[short]["input_ids"])
    assert batch["attention_mask"][short, n:].sum() == 0 and batch["attention_mask"][short, :n].all()
    assert batch["start_positions"].tolist() == [f["start_positions"] for f in features]
    unanswered = task.collate(tokenizer, task.encode(tokenizer, [Example("who ?", None, "Ann met Bo.")], 32))
    assert "start_positions" not in unanswered


def test_batches_count_features_and_know_their_examples(tokenizer):
    examples = [qa("which tea ?", " ".join(["word"] * 60) + " Harbour Grey", "Harbour Grey"),
                qa("who ?", "Ann met Bo.", "Bo")]
    batches = Batches(ExtractiveQATask(ExtractiveQAOptions(doc_stride=8)), tokenizer, examples, [], 40)
    assert len(batches) > len(examples)
    assert batches.example_of == [f["example"] for f in batches.features]
    assert batches.example_of[-1] == 1 and batches.example_of[0] == 0


def test_a_question_too_long_for_its_window_is_one_clear_error(tokenizer):
    example = qa(" ".join(["why"] * 30) + " ?", "Because the sky is blue.", "blue")
    example.origin = "qa.json question id 'q7'"
    with pytest.raises(DataError) as info:
        ExtractiveQATask(ExtractiveQAOptions(doc_stride=8)).encode(tokenizer, [example], 32)
    message = str(info.value)
    assert message.startswith("qa.json question id 'q7': the question is 31 tokens") and "\n" not in message
    assert "raise data.max_length" in message and "extractive_qa.doc_stride" in message


def test_a_too_long_question_stops_the_run_before_the_model_loads(tiny_qa_config, tmp_path, monkeypatch):
    from tunelab import models
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    cfg = tiny_qa_config("lora")
    cfg["data"]["max_length"] = 12  # leaves fewer context tokens than doc_stride 8 beside the questions
    with pytest.raises(DataError, match="raise data.max_length"):
        train(cfg, log=lambda _: None)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_options_come_from_the_config(tiny_qa_config):
    cfg = load_config(tiny_qa_config())
    task = task_for(cfg)
    assert isinstance(task, ExtractiveQATask) and task.options.doc_stride == 8 and task.options.max_answer_length == 4


def test_train_then_predict_on_rows_without_answers(tiny_qa_config, tmp_path):
    metrics = train(tiny_qa_config("lora"), log=lambda _: None)
    assert set(metrics["test"]) >= {"f1", "exact_match", "loss"}
    assert metrics["trained_head_modules"] == ["qa_outputs"]
    run = metrics["run_folder"]
    rows = [json.loads(line) for line in open(f"{run}/predictions.jsonl")]
    assert {"question", "context", "prediction", "answers"} <= set(rows[0])
    assert all(row["prediction"] in row["context"] for row in rows)  # short contexts are kept whole

    inputs = tmp_path / "questions.jsonl"
    context = "the cat is red . the dog is blue ."
    inputs.write_text(json.dumps({"question": "what colour is the dog ?", "context": context}) + "\n")
    out = tmp_path / "answers.jsonl"
    assert predict(run, inputs, out) == 1
    row = json.loads(out.read_text())
    assert row["prediction"] and row["prediction"] in context and "answers" not in row


def test_train_and_predict_with_unanswerable_questions(tiny_qa_config, tiny_qa_json, tmp_path):
    """SQuAD v2 end to end on the tiny BERT: each context gets a question about an animal it does not name."""
    document = json.loads(tiny_qa_json.read_text())
    for a, article in enumerate(document["data"]):
        paragraph = article["paragraphs"][0]
        assert "yak" not in paragraph["context"]
        paragraph["qas"].append({"id": f"c{a}-none", "question": "what colour is the yak ?",
                                 "is_impossible": True, "answers": []})
    path = tmp_path / "tiny_qa_v2.json"
    path.write_text(json.dumps(document))
    cfg = tiny_qa_config("lora")
    cfg["data"]["source"] = str(path)
    cfg["extractive_qa"]["allow_unanswerable"] = True
    metrics = train(cfg, log=lambda _: None)
    assert {"has_answer_f1", "has_answer_exact_match", "no_answer_accuracy"} <= set(metrics["test"])
    assert 0.0 <= metrics["test"]["no_answer_accuracy"] <= 1.0
    rows = [json.loads(line) for line in open(f"{metrics['run_folder']}/predictions.jsonl")]
    assert sum(row["answers"] == [] for row in rows) == len(rows) // 3  # one question in three has no answer
    saved = load_config(f"{metrics['run_folder']}/config.yaml")
    assert saved.task_options["extractive_qa"].allow_unanswerable  # `predict` answers with the run's own rule
