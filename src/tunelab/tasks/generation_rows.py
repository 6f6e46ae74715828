"""The generation task's data rows: `prompt`/`response`, `source`/`target`, or a `messages` conversation whose
last turn is the answer to learn; each row checked, an error naming the row and the fix."""
from __future__ import annotations

import json
from typing import Any

from ..data import Example
from ..errors import DataError


def generation_examples(rows: list[tuple[str, dict[str, Any]]], columns: dict[str, str],
                        need_label: bool) -> list[Example]:
    """Rows of `prompt`/`response`, `source`/`target`, or `messages` → examples (text: prompt, label: answer)."""
    cols = columns
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
