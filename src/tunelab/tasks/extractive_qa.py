"""Extractive question answering: the answer is a span of the context, found by scoring every context
token as the answer's start and as its end (`AutoModelForQuestionAnswering`: two logits per token).

A context longer than data.max_length is cut into windows that overlap by `doc_stride` tokens, the
question repeated in each (as in Hugging Face's run_qa example). A window that holds the whole answer
is trained to point at it; any other window points at [CLS] (start = end = 0), so one example gives
several training features. To answer, every window proposes its best span — inside the context,
start ≤ end, at most `max_answer_length` tokens — scored by start logit + end logit; the best proposal
over all windows of the example is mapped back to the context's characters through the tokenizer's
offsets. Metrics are SQuAD's exact match and token F1 (`text_metrics`), each the best over the
example's accepted answers, averaged over examples (Rajpurkar et al. 2016, https://arxiv.org/abs/1606.05250).

With `allow_unanswerable` (SQuAD v2, Rajpurkar et al. 2018, https://arxiv.org/abs/1806.03822), a
question without answers trains every window to point at [CLS]; to answer, the example's null score is
the lowest [CLS] score (start + end logit) over its windows — the window that most believes an answer
is there, as run_qa's post-processing takes it — and the answer is "" when that beats the best span by
more than `null_score_diff_threshold`. An unanswerable question scores 1 when answered "", 0 otherwise;
the metrics then add the has-answer and no-answer parts, as the official v2 evaluation does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..data import Example
from ..data.squad import squad_examples
from ..errors import DataError, TunelabError
from ..training.batches import Batches
from ..training.loop import predict_scores
from ..typed import option, positive
from ..uncertainty import mean_of
from .base import Task, gold_in
from .registry import register
from .text_metrics import exact_match, token_f1

MODEL_KEYS = ("input_ids", "token_type_ids", "attention_mask")
CLS = 0  # where a window without the answer points: the first token, [CLS] for BERT-style tokenizers
CONTEXT_SHOWN = 300  # characters of the context kept in predictions.jsonl


@dataclass
class Answers:
    """What the task's `outputs` gives: the best span of each example as text, and its score."""
    texts: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.texts)



@dataclass
class ExtractiveQAOptions:
    """The `extractive_qa:` block: how long contexts are cut into windows, how long an answer may be."""
    doc_stride: int = option(32, "Tokens that consecutive windows of a context longer than data.max_length share, "
                             "so that an answer cut by one window's edge lies whole inside the next; must be "
                             "smaller than the context tokens a window holds (data.max_length minus the question).",
                             positive)
    max_answer_length: int = option(30, "Longest answer the model may give, in tokens.", positive)
    allow_unanswerable: bool = option(False, "Accept questions the context does not answer (SQuAD v2: "
                                      "`is_impossible`, or no answers; run_qa's --version_2_with_negative): the "
                                      "model learns to point them at [CLS] and answers them with the empty string. "
                                      "Off, such a question is a data error, since in SQuAD v1 data it is a mistake.")
    null_score_diff_threshold: float = option(0.0, "With allow_unanswerable: the answer is empty when the [CLS] "
                                              "score (start + end logit) beats the best span's by more than this; "
                                              "raise it to answer more often.")


@register
class ExtractiveQATask(Task):
    name = "extractive_qa"
    label_kind = "span"
    required_columns = ()  # SQuAD articles or question/context/answers rows: checked when the rows are read
    metric_names = ("f1", "exact_match", "loss")
    default_metric = "f1"
    shown_metrics = ("f1", "exact_match")  # beside the chosen metric in a comparison table
    peft_task_type = "QUESTION_ANS"
    head_names = ("qa_outputs",)

    def config_problems(self, cfg) -> list[str]:
        stride = self.options_in(cfg).doc_stride
        if stride >= cfg.data.max_length:
            return [f"`extractive_qa.doc_stride` {stride} must be smaller than `data.max_length` "
                    f"{cfg.data.max_length} (windows share that many context tokens); lower it, e.g. to a quarter of "
                    f"data.max_length"]
        return []

    def examples(self, rows: list[tuple[str, dict[str, Any]]], columns: dict[str, str],
                 need_label: bool = True) -> list[Example]:
        """SQuAD articles or flat question/context/answers rows (`data/squad.py` reads the format)."""
        return squad_examples(rows, columns, need_label)

    Options = ExtractiveQAOptions
    options_doc = "Context windows and answer length of the `extractive_qa` task."

    def __init__(self, options: ExtractiveQAOptions | None = None):
        self.options = options or ExtractiveQAOptions()

    def configure(self, cfg) -> "ExtractiveQATask":
        return ExtractiveQATask(self.options_in(cfg))

    def auto_class(self):
        from transformers import AutoModelForQuestionAnswering
        return AutoModelForQuestionAnswering

    def model_kwargs(self, labels: list[str]) -> dict[str, Any]:
        return {}

    def targets(self, examples: list[Example], labels: list[str]) -> None:
        return None  # start/end positions travel in the features, one pair per window

    def logits(self, output) -> torch.Tensor:
        return torch.stack([output.start_logits, output.end_logits], dim=-1)  # windows × tokens × 2

    # -- windows ---------------------------------------------------------------------------------
    def encode(self, tokenizer, examples: list[Example], max_length: int) -> list[dict[str, Any]]:
        """One feature per window: model inputs, `example` (its index), `offsets` (character span of each
        context token, None for the question and special tokens) and, for answered examples, the targets."""
        if not examples:
            return []
        if not tokenizer.is_fast:
            raise TunelabError("extractive_qa maps answers to tokens through character offsets, which only fast "
                               "tokenizers give; use a model folder with a tokenizer.json")
        enc = tokenizer([e.text for e in examples], [e.text_pair for e in examples], truncation="only_second",
                        max_length=max_length, stride=self._stride(tokenizer, examples, max_length),
                        return_overflowing_tokens=True, return_offsets_mapping=True)
        features = []
        for i, sample in enumerate(enc["overflow_to_sample_mapping"]):
            offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], enc.sequence_ids(i))]
            feature: dict[str, Any] = {k: enc[k][i] for k in MODEL_KEYS if k in enc}
            feature.update(example=sample, offsets=offsets)
            answers = examples[sample].answers
            if answers:  # trained on the first answer, like run_qa; metrics use them all
                feature["start_positions"], feature["end_positions"] = answer_tokens(offsets, *answers[0])
            elif answers == []:  # unanswerable (allowed: check_data ran before)
                feature["start_positions"] = feature["end_positions"] = CLS
            features.append(feature)
        return features

    def check_data(self, tokenizer, splits, max_length: int) -> None:
        """Unanswerable questions the options do not allow and a question too long for its window, in any
        split, before the model loads."""
        for part in (splits.train, splits.validation, splits.test):
            if not self.options.allow_unanswerable:
                unanswerable = next((e for e in part if e.answers == []), None)
                if unanswerable is not None:
                    raise DataError(f"{unanswerable.origin}: the question has no answer (unanswerable, as in SQuAD "
                                    f"v2); set extractive_qa.allow_unanswerable: true to train the model to answer "
                                    f"such questions with nothing, or give it an answer from the context")
            if part:
                self._stride(tokenizer, part, max_length)

    def _stride(self, tokenizer, examples: list[Example], max_length: int) -> int:
        """`doc_stride`, checked against the context room the longest question leaves (the tokenizer would abort)."""
        lengths = [len(ids) for ids in tokenizer([e.text for e in examples], add_special_tokens=False)["input_ids"]]
        longest = int(np.argmax(lengths))
        room = max_length - lengths[longest] - tokenizer.num_special_tokens_to_add(pair=True)
        stride = self.options.doc_stride
        if room <= stride:
            raise DataError(f"{examples[longest].origin}: the question is {lengths[longest]} tokens, which leaves "
                            f"{max(room, 0)} context tokens per window of data.max_length {max_length}, not more "
                            f"than extractive_qa.doc_stride {stride}; raise data.max_length, lower "
                            f"extractive_qa.doc_stride or shorten the question")
        return stride

    def collate(self, tokenizer, features: list[dict[str, Any]], multiple: int = 1) -> dict[str, torch.Tensor]:
        """Model inputs padded on the right (targets count positions from the left) and the span targets.
        Widths stay exact whatever `multiple` (rounding was not measured on this task)."""
        width = max(len(f["input_ids"]) for f in features)
        pads = {"input_ids": tokenizer.pad_token_id, "token_type_ids": tokenizer.pad_token_type_id,
                "attention_mask": 0}
        batch = {k: torch.tensor([f[k] + [pads[k]] * (width - len(f[k])) for f in features])
                 for k in MODEL_KEYS if k in features[0]}
        if all("start_positions" in f for f in features):
            for key in ("start_positions", "end_positions"):
                batch[key] = torch.tensor([f[key] for f in features])
        return batch

    # -- outputs, predictions, metrics -----------------------------------------------------------
    def outputs(self, model: nn.Module, tokenizer, examples: list[Example], labels: list[str], *, max_length: int,
                batch_size: int, precision: str, device: torch.device, with_loss: bool) -> tuple[Answers, float | None]:
        batches = Batches(self, tokenizer, examples, labels, max_length, with_targets=with_loss)
        logits, loss = predict_scores(model, batches, batch_size, precision, device)
        return self.answers(examples, batches.features, logits), (loss if with_loss else None)

    def answers(self, examples: list[Example], features: list[dict[str, Any]], logits: np.ndarray) -> Answers:
        """The best span of each example over all its windows (`logits`: windows × tokens × [start, end]);
        with allow_unanswerable, "" where the example's null score beats that span by the threshold."""
        best: list[tuple[float, str]] = [(-np.inf, "")] * len(examples)
        null = np.full(len(examples), np.inf)
        for feature, row in zip(features, logits):
            span = best_span(row[:, 0], row[:, 1], feature["offsets"], self.options.max_answer_length)
            n = feature["example"]
            if span is not None and span[0] > best[n][0]:
                best[n] = (span[0], examples[n].text_pair[span[1]:span[2]])
            null[n] = min(null[n], float(row[CLS, 0] + row[CLS, 1]))
        if self.options.allow_unanswerable:
            best = [(float(null[n]), "") if null[n] - score > self.options.null_score_diff_threshold else (score, text)
                    for n, (score, text) in enumerate(best)]
        return Answers([text for _, text in best], [float(score) for score, _ in best])

    def predictions(self, outputs: Answers, labels: list[str]) -> list[str]:
        return outputs.texts

    def metrics(self, outputs: Answers, examples: list[Example], labels: list[str]) -> dict[str, Any]:
        references = [[text for text, _ in e.answers] if e.answers else [""] for e in examples]  # "": no answer
        scores = squad_scores(outputs.texts, references)
        unanswerable = [e.answers == [] for e in examples]
        if any(unanswerable):  # the v2 evaluation's HasAns/NoAns parts: how each kind of question fares
            answerable = [(p, r) for p, r, u in zip(outputs.texts, references, unanswerable) if not u]
            if answerable:
                part = squad_scores(*map(list, zip(*answerable)))
                scores.update(has_answer_exact_match=part["exact_match"], has_answer_f1=part["f1"])
            scores["no_answer_accuracy"] = float(np.mean([p == "" for p, u in zip(outputs.texts, unanswerable) if u]))
        return scores

    def resampled_metric(self, rows: list[dict], metric: str, labels: list[str]
                         ) -> Callable[[np.ndarray], float] | None:
        """Exact match and F1 (each question's best over its answers, as `squad_scores`), overall or over the
        answerable questions drawn, and the share of unanswerable ones answered "": means of per-row values."""
        if not gold_in(rows, "answers"):
            return None
        unanswerable = np.array([r["answers"] == [] for r in rows])
        if metric == "no_answer_accuracy":
            empty = [r["prediction"] == "" for r in rows]
            return mean_of(empty, unanswerable) if unanswerable.any() else None
        part = metric.removeprefix("has_answer_")
        if part not in ("exact_match", "f1") or (part != metric and unanswerable.all()):
            return None
        scores = [squad_scores([r["prediction"]], [r["answers"] or [""]])[part] for r in rows]  # "": no answer
        return mean_of(scores, ~unanswerable if part != metric else None)

    def prediction_rows(self, examples: list[Example], outputs: Answers, labels: list[str]) -> Iterator[dict]:
        for e, text, score in zip(examples, outputs.texts, outputs.scores):
            context = e.text_pair or ""
            row: dict[str, Any] = {"question": e.text, "context": context if len(context) <= CONTEXT_SHOWN
                                   else context[:CONTEXT_SHOWN] + "…", "prediction": text, "score": round(score, 4)}
            if e.answers is not None:
                row["answers"] = [a for a, _ in e.answers]  # [] for an unanswerable question
            yield row


def answer_tokens(offsets: list[tuple[int, int] | None], text: str, start: int) -> tuple[int, int]:
    """Positions of the answer's first and last token in one window, or (CLS, CLS) where the window
    does not hold the whole answer."""
    end = start + len(text)
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > start or offsets[inside[-1]][1] < end:
        return CLS, CLS
    first = next(i for i in inside if offsets[i][1] > start)
    last = next(i for i in reversed(inside) if offsets[i][0] < end)
    return first, last


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, offsets: list[tuple[int, int] | None],
              max_answer_length: int) -> tuple[float, int, int] | None:
    """(score, first character, end character) of the best context span of one window, or None without context.

    Every pair is scored at once: a window of n tokens is an n × n matrix, tiny next to the forward pass.
    """
    n = len(offsets)  # the logits may be wider: batches are padded to their longest window
    context = np.array([o is not None for o in offsets])
    if not context.any():
        return None
    scores = start_logits[:n, None] + end_logits[None, :n]
    first, last = np.indices(scores.shape)
    valid = (last >= first) & (last - first < max_answer_length) & context[:, None] & context[None, :]
    scores = np.where(valid, scores, -np.inf)
    a, b = divmod(int(scores.argmax()), n)
    return float(scores[a, b]), offsets[a][0], offsets[b][1]


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Exact match and token F1, each the best over an example's references, averaged over examples."""
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = [max((exact_match([p], [r]) for r in refs), default=0.0) for p, refs in zip(predictions, references)]
    f1 = [max((token_f1([p], [r]) for r in refs), default=0.0) for p, refs in zip(predictions, references)]
    return {"exact_match": sum(em) / len(em), "f1": sum(f1) / len(f1)}
