"""Build typed dataclasses from plain YAML data, collecting every problem at once.

Each field is declared with `option(default, doc, check=...)`: the docstring serves the CLI
help and the docs, and `check` validates the single field where it is defined. Cross-field
rules live in `settings.validate`. Problems are collected with their dotted key so a user fixes
the whole YAML in one pass.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Literal, get_args, get_origin, get_type_hints

Check = Callable[[Any], str | None]


def option(default: Any = dataclasses.MISSING, doc: str = "", check: Check | None = None, *,
           factory: Callable[[], Any] | None = None) -> Any:
    """A documented dataclass field. `check` returns a problem ("must be positive") or None."""
    meta = {"doc": doc, "check": check}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be positive"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be zero or more"


def fraction(v: Any) -> str | None:
    return None if 0 <= v < 1 else "must be at least 0 and below 1"


def docs(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Return `value` as type `tp`, or append a problem and return None."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option_tp in options:
            if option_tp is type(None):
                continue
            trial: list[str] = []
            converted = _convert(value, option_tp, key, trial)
            if not trial:
                return converted
        problems.append(f"`{key}` must be {_type_name(tp)}, got {value!r}")
        return None
    if origin is Literal:
        if value in get_args(tp):
            return value
        problems.append(f"`{key}` must be one of: {', '.join(map(str, get_args(tp)))}; got {value!r}")
        return None
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `target_modules: query` means [query]
        if not isinstance(value, list):
            problems.append(f"`{key}` must be {_type_name(tp)}, got {value!r}")
            return None
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"`{key}` must be {_type_name(tp)}, got {value!r}")
            return None
        _, value_tp = get_args(tp)
        return {str(k): _convert(v, value_tp, f"{key}.{k}", problems) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            problems.append(f"`{key}` must be a mapping of options, got {value!r}")
            return None
        return build(tp, value, key, problems)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is Any:
        return value
    problems.append(f"`{key}` must be {_type_name(tp)}, got {value!r}")
    return None


def build(cls: type, data: dict[str, Any], prefix: str, problems: list[str], *, others: tuple[str, ...] = ()) -> Any:
    """Build dataclass `cls` from `data`; unknown keys and bad values go to `problems`. `others` are keys the
    caller reads itself (the tasks' blocks of a `RunConfig`): valid, but not fields of `cls`."""
    start = len(problems)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    dotted = f"{prefix}." if prefix else ""
    for key in data:
        if key not in fields and key not in others:
            problems.append(f"unknown key `{dotted}{key}`; valid keys: {', '.join([*fields, *others])}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"`{dotted}{name}` is required: {f.metadata.get('doc', '')}")
            continue
        before = len(problems)
        value = _convert(data[name], hints[name], f"{dotted}{name}", problems)
        check = f.metadata.get("check")
        if len(problems) == before and check is not None and value is not None:
            problem = check(value)
            if problem:
                problems.append(f"`{dotted}{name}` {problem}, got {data[name]!r}")
        kwargs[name] = value
    if len(problems) > start:
        # Return a best-effort object so that later checks can still run; the caller raises.
        safe = {k: v for k, v in kwargs.items() if v is not None}
        try:
            return cls(**safe)
        except TypeError:
            return None
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
