"""Extractive QA data: SQuAD v1.1 files and flat question rows → examples (question, context, answers).

A SQuAD file is `{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers":
[{"text", "answer_start"}]}]}]}]}`; `files.read_rows` has already unwrapped "data" into one row per
article. Flat rows (JSON Lines, CSV, parquet, a saved `datasets` folder such as Hugging Face's `squad`)
hold one question each: `question`, `context` and `answers`, the latter either {"text": [...],
"answer_start": [...]} or a list of {"text", "answer_start"} (in a CSV cell: as JSON text).

Every answer must be the context's own text at its offset: a wrong offset would silently teach the
model a wrong span, so it is an error that says where the answer really is.

A question without answers (SQuAD v2's `is_impossible`, or an empty answer list in Hugging Face's
`squad_v2` rows) is unanswerable: its `answers` is [] and its label "" (v2's empty answer). Whether
that is allowed is the task's option (`extractive_qa.allow_unanswerable`), checked before training;
when rows are only to be answered (`need_label=False`), missing answers give None.
"""
from __future__ import annotations

import json
from typing import Any

from ..errors import DataError
from .examples import Example

SHAPE = ('{"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id": ..., "question": ..., '
         '"answers": [{"text": ..., "answer_start": ...}]}]}]}]}')


def squad_examples(rows: list[tuple[str, dict[str, Any]]], columns: dict[str, str],
                   need_label: bool = True) -> list[Example]:
    """SQuAD articles (rows with `paragraphs`) or flat question rows → one example per question.

    Examples are grouped by their context, so that one context never straddles two splits.
    """
    out: list[Example] = []
    for origin, row in rows:
        if "paragraphs" in row:
            out += _article(origin, row, need_label)
        else:
            out.append(_flat(origin, row, columns, need_label))
    return out


def _article(origin: str, row: dict[str, Any], need_label: bool) -> list[Example]:
    file, item = origin.rsplit(" ", 2)[0], origin.rsplit(" ", 1)[1]
    where = f"{file} article {item}"
    paragraphs = row["paragraphs"]
    if not isinstance(paragraphs, list) or not paragraphs:
        raise DataError(f"{where}: 'paragraphs' must be a non-empty list of {{\"context\", \"qas\"}}; a SQuAD file "
                        f"looks like {SHAPE}")
    out = []
    for p, paragraph in enumerate(paragraphs, start=1):
        at = f"{where} paragraph {p}"
        if not isinstance(paragraph, dict):
            raise DataError(f"{at}: expected an object with 'context' and 'qas', got {type(paragraph).__name__}")
        context = _text(paragraph, "context", at, "the passage that the answers are taken from")
        qas = paragraph.get("qas")
        if not isinstance(qas, list) or not qas:
            raise DataError(f"{at}: no 'qas' list of questions; add {{\"id\", \"question\", \"answers\"}} entries "
                            f"or remove the paragraph")
        for q, qa in enumerate(qas, start=1):
            qid = qa.get("id") if isinstance(qa, dict) else None
            here = f"{file} question id {qid!r}" if qid not in (None, "") else f"{at} question {q}"
            if not isinstance(qa, dict):
                raise DataError(f"{here}: expected an object with 'question' and 'answers', got {type(qa).__name__}")
            if qa.get("is_impossible") and qa.get("answers"):
                raise DataError(f"{here}: 'is_impossible' is true but the question has answers; set it to false "
                                f"or empty 'answers' (SQuAD v2 keeps the guesses in 'plausible_answers')")
            question = _text(qa, "question", here, "the question's text")
            if need_label and "answers" not in qa and not qa.get("is_impossible"):
                raise DataError(f"{here}: no 'answers'; give [{{\"text\": ..., \"answer_start\": ...}}], or [] and "
                                f"\"is_impossible\": true for a question the context does not answer")
            answers = _answers(qa.get("answers"), "answers", context, here, need_label)
            out.append(_example(question, context, answers, here))
    return out


def _flat(origin: str, row: dict[str, Any], columns: dict[str, str], need_label: bool) -> Example:
    question_col, context_col, answers_col = (columns.get(r, r) for r in ("question", "context", "answers"))
    for role, col in (("question", question_col), ("context", context_col)):
        if col not in row:
            raise DataError(f"{origin}: no {col!r} (keys: {', '.join(map(str, row))}); give a SQuAD file ({SHAPE}) "
                            f"or rows with question, context and answers (data.columns.{role} names the {role} "
                            f"column)")
    if need_label and answers_col not in row:  # a misnamed column must not read as "every question unanswerable"
        raise DataError(f"{origin}: no {answers_col!r} (keys: {', '.join(map(str, row))}); add the answers, or name "
                        f"their column with data.columns.answers")
    context = _text(row, context_col, origin, "the passage that the answers are taken from")
    question = _text(row, question_col, origin, "the question's text")
    answers = _answers(row.get(answers_col), answers_col, context, origin, need_label)
    return _example(question, context, answers, origin)


def _example(question: str, context: str, answers: list[tuple[str, int]] | None, origin: str) -> Example:
    label = answers[0][0] if answers else None if answers is None else ""  # "": unanswerable
    return Example(question.strip(), label, context, origin, group=context, answers=answers)


def _text(row: dict[str, Any], key: str, where: str, role: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        what = "missing" if value is None else "empty" if isinstance(value, str) else f"not text ({value!r:.40})"
        raise DataError(f"{where}: {key!r} is {what}; add {role}")
    return value


def _answers(value: Any, key: str, context: str, where: str, need_label: bool) -> list[tuple[str, int]] | None:
    if isinstance(value, str):  # a CSV cell holds the answers as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: {key!r} is not JSON; write it as [{{\"text\": ..., \"answer_start\": ...}}]") \
                from None
    if isinstance(value, dict) and isinstance(value.get("text"), list):  # Hugging Face `squad`: lists side by side
        starts = value.get("answer_start")
        if not isinstance(starts, list) or len(starts) != len(value["text"]):
            raise DataError(f"{where}: {key!r} needs as many answer_start values as texts; got {value!r:.80}")
        value = [{"text": t, "answer_start": s} for t, s in zip(value["text"], starts)]
    if not value:  # unanswerable (SQuAD v2), or not yet answered
        return [] if need_label else None
    if not isinstance(value, list):
        raise DataError(f"{where}: {key!r} must be a list of {{\"text\": ..., \"answer_start\": ...}}, got "
                        f"{value!r:.80}")
    return [_answer(a, context, f"{where} answer {i}") for i, a in enumerate(value, start=1)]


def _answer(answer: Any, context: str, where: str) -> tuple[str, int]:
    if not isinstance(answer, dict) or "text" not in answer or "answer_start" not in answer:
        raise DataError(f"{where}: an answer needs 'text' and 'answer_start' (the character offset in the "
                        f"context), got {answer!r:.80}")
    text, start = answer["text"], answer["answer_start"]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: the answer's 'text' is empty; copy the answer from the context")
    if isinstance(start, float) and start.is_integer():  # parquet and some JSON writers store 57.0
        start = int(start)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise DataError(f"{where}: 'answer_start' must be a character offset (a whole number ≥ 0), got {start!r}")
    if context[start:start + len(text)] != text:
        found = [i for i in range(len(context)) if context.startswith(text, i)]
        fix = (f"set answer_start to {found[0]}" + (f" (it occurs at {', '.join(map(str, found))})"
                                                    if len(found) > 1 else "")
               if found else "the text does not occur in the context: copy it exactly from the context")
        raise DataError(f"{where}: answer {text!r:.60} does not match the context at answer_start {start} (the "
                        f"context has {context[start:start + len(text)]!r:.60} there); {fix}")
    return text, start
