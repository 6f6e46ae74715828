"""From a `DataConfig` to validated train/validation/test splits — before any model is loaded."""
from __future__ import annotations

import json
import math
import random
from collections import Counter
from typing import Any

from sklearn.model_selection import train_test_split

from ..config import DataConfig
from ..errors import DataError
from .builtin import DATASETS
from .examples import Example, Splits
from .files import read_rows
from .squad import squad_examples


def load_splits(cfg: DataConfig, label_kind: str) -> Splits:
    """`label_kind` is "class" (classification), "number" (regression), "text" (generation) or "span"
    (extractive QA)."""
    if cfg.source in DATASETS:
        dataset = DATASETS.get(cfg.source)
        examples = dataset.load(**{k: getattr(cfg, k) for k in dataset.options if getattr(cfg, k) is not None})
        where = cfg.source
    else:
        examples = rows_to_examples(read_rows(cfg.source), cfg, label_kind)
        where = cfg.source
    labels = _label_set(cfg, examples, label_kind, where)
    if cfg.max_examples is not None and cfg.max_examples < len(examples):
        examples = _subset(examples, cfg.max_examples, label_kind, cfg.split.seed)

    hold_val = cfg.validation_file is None
    hold_test = cfg.test_file is None
    val_frac = cfg.split.validation if hold_val else 0.0
    test_frac = cfg.split.test if hold_test else 0.0
    train, val, test = _split(examples, val_frac, test_frac, label_kind, cfg.split.seed, where)
    if not hold_val:
        val = rows_to_examples(read_rows(cfg.validation_file), cfg, label_kind)
    if not hold_test:
        test = rows_to_examples(read_rows(cfg.test_file), cfg, label_kind)
    splits = Splits(train, val, test, labels)
    _check_splits(splits, cfg, label_kind, labels)
    return splits


def rows_to_examples(rows: list[tuple[str, dict[str, Any]]], cfg: DataConfig, label_kind: str,
                     need_label: bool = True) -> list[Example]:
    if label_kind == "text":
        return _generation_examples(rows, cfg, need_label)
    if label_kind == "span":
        return squad_examples(rows, cfg.columns, need_label)
    text_col = cfg.columns.get("text", "text")
    label_col = cfg.columns.get("label", "label")
    pair_col = cfg.columns.get("text_pair")
    origin0, first = rows[0]
    file = origin0.rsplit(" ", 2)[0]
    needed = [("text", text_col)] + ([("label", label_col)] if need_label else []) + \
        ([("text_pair", pair_col)] if pair_col else [])
    for role, col in needed:
        if col not in first:
            raise DataError(f"{file}: no column {col!r} (columns: {', '.join(map(str, first))}); "
                            f"name it `{col}`, or set data.columns.{role} to the column that holds the {role}")
    out = []
    for origin, row in rows:
        text = row.get(text_col)
        if text is None or not str(text).strip():
            raise DataError(f"{origin}: empty text in column {text_col!r}; fill it in or remove the row")
        pair = None
        if pair_col:
            pair = row.get(pair_col)
            if pair is None or not str(pair).strip():
                raise DataError(f"{origin}: empty text in column {pair_col!r}; fill it in or remove the row")
            pair = str(pair)
        label = row.get(label_col) if label_col in row else None
        if label is None or (isinstance(label, str) and not label.strip()):
            if need_label:
                raise DataError(f"{origin}: missing label in column {label_col!r}; add it or remove the row")
            label = None
        elif label_kind == "number":
            try:
                label = float(label)
            except (TypeError, ValueError):
                raise DataError(f"{origin}: label {label!r} in column {label_col!r} is not a number; "
                                f"regression needs numeric targets") from None
            if not math.isfinite(label):
                raise DataError(f"{origin}: label {label!r} is not a finite number")
        else:
            label = _label_str(label)
        out.append(Example(str(text), label, pair, origin))
    return out


def _generation_examples(rows: list[tuple[str, dict[str, Any]]], cfg: DataConfig, need_label: bool) -> list[Example]:
    """Rows of `prompt`/`response`, `source`/`target`, or `messages` → examples (text: prompt, label: answer)."""
    cols = cfg.columns
    origin0, first = rows[0]
    file = origin0.rsplit(" ", 2)[0]
    if "messages" in cols or ("messages" in first and not {"prompt", "source"} & set(cols)):
        col = cols.get("messages", "messages")
        if col not in first:
            raise DataError(f"{file}: no column {col!r} (columns: {', '.join(map(str, first))}); set "
                            f"data.columns.messages to the column that holds the conversation")
        return [_conversation(origin, row.get(col), col, need_label) for origin, row in rows]
    if {"prompt", "source"} & set(cols):  # the config names the layout
        pairs = "source" in cols
    else:  # the file's own column names say it, as `messages` does above
        pairs = "source" in first and "prompt" not in first
    prompt_role, answer_role = ("source", "target") if pairs else ("prompt", "response")
    prompt_col, answer_col = cols.get(prompt_role, prompt_role), cols.get(answer_role, answer_role)
    for role, col in [(prompt_role, prompt_col)] + ([(answer_role, answer_col)] if need_label else []):
        if col not in first:
            other = {"prompt": "source", "response": "target", "source": "prompt", "target": "response"}[role]
            raise DataError(f"{file}: no column {col!r} (columns: {', '.join(map(str, first))}); name it `{role}` "
                            f"(or `{other}`), or set data.columns.{role} to the column that holds the {role} "
                            f"(or give `messages`)")
    out = []
    for origin, row in rows:
        prompt, answer = row.get(prompt_col), row.get(answer_col)
        if prompt is None or not str(prompt).strip():
            raise DataError(f"{origin}: empty text in column {prompt_col!r}; fill it in or remove the row")
        if answer is None or not str(answer).strip():
            if need_label:
                raise DataError(f"{origin}: empty answer in column {answer_col!r}; fill it in or remove the row")
            answer = None
        out.append(Example(str(prompt), None if answer is None else str(answer), origin=origin))
    return out


def _conversation(origin: str, value: Any, col: str, need_label: bool) -> Example:
    if isinstance(value, str):  # a CSV cell holds the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        raise DataError(f"{origin}: column {col!r} must be a list of {{\"role\": ..., \"content\": ...}} "
                        f"messages, got {str(value)[:80]!r}")
    turns = [{"role": m["role"], "content": m["content"]} for m in value]
    if turns[-1]["role"] == "assistant":
        answer, turns = turns[-1]["content"], turns[:-1]
    elif need_label:
        raise DataError(f"{origin}: the last message must be the answer to learn (role 'assistant'), got role "
                        f"{turns[-1]['role']!r}; end each conversation with the assistant's reply")
    else:
        answer = None
    if not turns:
        raise DataError(f"{origin}: the conversation has an answer but no prompt; add the user's message")
    last_user = next((m["content"] for m in reversed(turns) if m["role"] == "user"), turns[-1]["content"])
    return Example(last_user, answer, origin=origin, messages=turns)


def _label_str(value: Any) -> str:
    # JSON gives 1, CSV gives "1": both mean the same label.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _label_set(cfg: DataConfig, examples: list[Example], label_kind: str, where: str) -> list[str]:
    if label_kind != "class":
        return []
    found = sorted({e.label for e in examples})
    if cfg.labels is None:
        if len(found) < 2:
            raise DataError(f"{where}: every example has the label {found[0]!r}; classification needs at least "
                            f"two classes")
        return found
    declared = [str(x) for x in cfg.labels]
    for e in examples:
        if e.label not in declared:
            raise DataError(f"{e.origin}: label {e.label!r} is not one of: {', '.join(declared)}; fix the label "
                            f"or add it to data.labels")
    return declared


def _stratify(examples: list[Example], label_kind: str) -> list | None:
    if label_kind != "class":
        return None
    counts = Counter(e.label for e in examples)
    # Stratifying needs two examples of every class; rarer classes fall back to a plain shuffle.
    return [e.label for e in examples] if min(counts.values()) >= 2 else None


def _stratify_sizes(examples: list[Example], label_kind: str, n_out: int) -> list | None:
    strat = _stratify(examples, label_kind)
    if strat is not None and min(n_out, len(examples) - n_out) < len(set(strat)):
        strat = None  # a side smaller than the number of classes cannot hold one of each
    return strat


def _subset(examples: list[Example], n: int, label_kind: str, seed: int) -> list[Example]:
    kept, _ = train_test_split(examples, train_size=n, random_state=seed,
                               stratify=_stratify_sizes(examples, label_kind, n))
    return kept


def _split(examples: list[Example], val: float, test: float, label_kind: str, seed: int, where: str):
    rest, test_set = examples, []
    if test > 0:
        rest, test_set = _cut(examples, test, label_kind, seed, "test", where)
    val_set = []
    if val > 0:
        # A group split drops the tail of the last held-out group, so count from the original size.
        frac = val * len(examples) / len(rest) if _grouped(examples) else val / (1 - test)
        rest, val_set = _cut(rest, frac, label_kind, seed, "validation", where)
    return rest, val_set, test_set


def _cut(examples: list[Example], frac: float, label_kind: str, seed: int, name: str, where: str):
    n_out = int(round(frac * len(examples)))
    if n_out == 0 or n_out >= len(examples):
        raise DataError(f"{where}: data.split.{name} = {frac:.3g} of {len(examples)} examples leaves the {name} "
                        f"split {'empty' if n_out == 0 else 'with everything'}; add examples or change "
                        f"data.split.{name}")
    if _grouped(examples):
        return _group_cut(examples, n_out, seed, name, where)
    strat = _stratify_sizes(examples, label_kind, n_out)
    return train_test_split(examples, test_size=n_out, random_state=seed, stratify=strat)


def _grouped(examples: list[Example]) -> bool:
    return bool(examples) and all(e.group is not None for e in examples)


def _group_cut(examples: list[Example], n_out: int, seed: int, name: str, where: str):
    """Whole groups, shuffled by `seed`, are held out until they hold `n_out` examples; the held-out side is
    trimmed to exactly `n_out` (the trimmed rest of the last group is dropped, never put back into training)."""
    sizes = Counter(e.group for e in examples)
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    held: list[str] = []
    for group in order:
        if sum(sizes[g] for g in held) >= n_out:
            break
        held.append(group)
    if len(held) == len(order):
        raise DataError(f"{where}: holding out {n_out} examples for {name} takes every group ({len(order)}); "
                        f"lower data.split.{name} or add examples")
    rank = {g: i for i, g in enumerate(held)}
    out = sorted((e for e in examples if e.group in rank), key=lambda e: rank[e.group])[:n_out]
    return [e for e in examples if e.group not in rank], out


def _check_splits(splits: Splits, cfg: DataConfig, label_kind: str, labels: list[str]) -> None:
    for name, part in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        if not part:
            source = getattr(cfg, f"{name}_file", None) or cfg.source
            raise DataError(f"{source}: the {name} split has no examples; add examples or change data.split")
    if label_kind == "class":
        if len({e.label for e in splits.train}) < 2:
            raise DataError(f"{cfg.source}: the train split holds a single class; add examples of the others")
        for part in (splits.validation, splits.test):
            for e in part:
                if e.label not in labels:
                    raise DataError(f"{e.origin}: label {e.label!r} is not one of the training labels: "
                                    f"{', '.join(labels)}; fix it or declare data.labels")

