"""The Setup tab's logic: the columns of an uploaded file, the config the form stands for, and its validation.

Everything here is the CLI's own: the file is read by `data.files.read_rows` and the splits are checked by
`data.load_splits`, so a bad upload gets the one line `tunelab train` would print; the method options come from
each registered method's `Options` type and its field docs, as `tunelab methods` prints them."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from ..data import DATASETS, load_splits
from ..data.files import read_rows
from ..errors import TunelabError
from ..methods import METHODS
from ..models import MODELS
from ..plan import method_config
from ..settings import load_config
from ..tasks import TASKS
from ..typed import docs

# The columns each task reads, as `data.columns` names them (the tasks' `labelled_texts`, `generation_rows`,
# `squad` readers); the first ones are required, `text_pair` is optional.
ROLES = {"classification": ("text", "label", "text_pair"), "regression": ("text", "label", "text_pair"),
         "generation": ("prompt", "response"), "extractive_qa": ("question", "context", "answers")}
OPTIONAL = {"text_pair"}
NONE = "(none)"


def choices() -> dict[str, list[str]]:
    """The registered names the form offers."""
    return {"tasks": TASKS.names(), "methods": METHODS.names(), "datasets": DATASETS.names(),
            "models": MODELS.names()}


def method_options() -> dict[str, list[tuple[str, str, str]]]:
    """Each method's options as (name, default as YAML, doc), from its `Options` dataclass."""
    out = {}
    for name, method in METHODS.items():
        fields = []
        for f in dataclasses.fields(method.Options):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            fields.append((f.name, _yaml_value(default), docs(method.Options)[f.name]))
        out[name] = fields
    return out


def _yaml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def columns_of(path: str | Path) -> list[str]:
    """The column names of a data file, in the file's order (a JSON Lines file: the keys of every row); raises the
    CLI's `DataError` for a file that cannot be read (empty, not UTF-8, broken JSON …)."""
    names: dict[str, None] = {}
    for _, row in read_rows(path):
        names.update(dict.fromkeys(map(str, row)))
    return list(names)


def guess_columns(task: str, columns: list[str]) -> dict[str, str]:
    """A role's column where the file has one of the same name, else the first unused column (required roles)."""
    roles = ROLES.get(task, ())
    out, free = {}, [c for c in columns if c not in roles]
    for role in roles:
        if role in columns:
            out[role] = role
        elif role not in OPTIONAL and free:
            out[role] = free.pop(0)
        else:
            out[role] = NONE
    return out


def build(task: str, model: str, source: str, columns: dict[str, str], methods: list[str],
          options: dict[str, dict[str, str]] | None = None, epochs: int = 3, batch_size: int = 16,
          max_length: int = 128, max_examples: int | None = None, output: str = "comparisons",
          name: str = "") -> dict[str, Any]:
    """The config dict the form stands for: what `tunelab compare CONFIG --methods ...` reads. Per-method options
    that differ from the method's default go under `methods:`; `columns` maps roles to the file's columns."""
    cfg: dict[str, Any] = {"task": task, "model": model}
    if name:
        cfg["name"] = name
    data: dict[str, Any] = {"source": source, "max_length": int(max_length)}
    if source not in DATASETS:
        # A required role left unmapped keeps its default column (its own name), so that a file without it gets
        # the reader's message naming the file's columns.
        mapped = {role: col if col and col != NONE else role for role, col in columns.items()
                  if role in ROLES.get(task, ()) and (role not in OPTIONAL or col and col != NONE)}
        if mapped:
            data["columns"] = mapped
    if max_examples:
        data["max_examples"] = int(max_examples)
    cfg["data"] = data
    cfg["method"] = {"name": methods[0] if methods else "lora"}
    per_method = {}
    defaults = method_options()
    for method in methods:
        given = (options or {}).get(method, {})
        changed = {}
        for key, default, _ in defaults.get(method, []):
            value = given.get(key)
            if value is None or str(value).strip() == default:
                continue
            changed[key] = yaml.safe_load(str(value))  # typed as YAML would type it; the config checks the type
        if changed:
            per_method[method] = changed
    if per_method:
        cfg["methods"] = per_method
    cfg["train"] = {"epochs": int(epochs), "batch_size": int(batch_size)}
    cfg["output"] = output
    return cfg


def to_yaml(cfg: dict[str, Any], methods: list[str]) -> str:
    head = f"# tunelab compare config.yaml --methods {','.join(methods)}\n" if methods else ""
    return head + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)


def problem(cfg: dict[str, Any], methods: list[str]) -> str | None:
    """None when `tunelab compare` would accept the config and its data, else the CLI's line (`error: ...`)."""
    try:
        if not methods:
            raise TunelabError("choose at least one method to compare")
        for m in methods:
            if m not in METHODS:
                raise TunelabError(f"--methods: {METHODS.unknown(m)}")
        parsed = load_config(method_config(cfg, methods[0], Path(".")))
        for m in methods[1:]:  # every method's config, as `compare` checks them before anything trains
            load_config(method_config(cfg, m, Path(".")))
        load_splits(parsed.data, TASKS.get(parsed.task))
    except TunelabError as e:
        return f"error: {e}"
    return None
