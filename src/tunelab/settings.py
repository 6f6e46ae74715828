"""A run's settings: a YAML file or a dict, merged with dotted overrides, built into the typed blocks of
`config.py` and checked against what the parts of tunelab know: the methods and their options, the tasks and
their metrics, the built-in datasets and models, the search spaces. Every problem found goes into one error, so
a user fixes a config in one pass.

`config.py` below knows none of those parts; each part defines its own names and options, and this module, above
them, puts them together.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from .config import TRAIN_PARAMS, MethodConfig, RunConfig, TrainConfig, _merge, parse_overrides, read_yaml
from .data import DATASETS
from .errors import ConfigError
from .methods import METHODS
from .models import MODELS
from .runs import folder_problem
from .tasks import TASKS
from .typed import build


def load_config(source: str | Path | dict | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """A validated `RunConfig` from a YAML path or a dict, plus dotted overrides."""
    data = read_yaml(source) if isinstance(source, (str, Path)) else copy.deepcopy(source or {})
    extra = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    if isinstance(data.get("method"), str):  # `method: lora` is short for `method: {name: lora}`
        data["method"] = {"name": data["method"]}
    method_renamed = isinstance(extra.get("method"), dict) and "name" in extra["method"]
    if method_renamed and isinstance(data.get("method"), dict):
        # `train lora.yaml method.name=full`: the file's LoRA options don't apply to full
        # fine-tuning, so keep only the ones the new method also has.
        data["method"] = _keep_options_of(extra["method"]["name"], data["method"])
    return from_dict(_merge(data, extra))


def _keep_options_of(name: Any, block: dict) -> dict:
    if name not in METHODS:
        return block
    valid = {f.name for f in dataclasses.fields(METHODS.get(name).Options)}
    return {k: v for k, v in block.items() if k in valid}


def from_dict(data: dict[str, Any]) -> RunConfig:
    problems: list[str] = []
    method_block = data.get("method", {"name": "lora"})
    if isinstance(method_block, str):
        method_block = {"name": method_block}
    rest = {k: v for k, v in data.items() if k != "method"}
    with_options = {name: task.Options for name, task in TASKS.items() if task.Options is not None}
    cfg = build(RunConfig, rest, "", problems, others=tuple(with_options))
    method = _build_method(method_block, problems)
    task_options = {name: _build_block(Options, rest.get(name, {}), name, problems)
                    for name, Options in with_options.items()}
    if cfg is not None and method is not None and None not in task_options.values():
        cfg.method = method
        cfg.task_options = task_options
        problems += validate(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _build_method(block: Any, problems: list[str]) -> MethodConfig | None:
    if not isinstance(block, dict) or "name" not in block:
        problems.append(f"`method` must be a mapping with a `name` ({', '.join(METHODS.names())}), got {block!r}")
        return None
    name = block["name"]
    if name not in METHODS:
        problems.append(f"`method.name`: {METHODS.unknown(name)}")
        return None
    options_cls = METHODS.get(name).Options
    opts = build(options_cls, {k: v for k, v in block.items() if k != "name"}, "method", problems)
    return MethodConfig(name, opts)


def _build_block(cls: type, block: Any, key: str, problems: list[str]) -> Any:
    if not isinstance(block, dict):
        problems.append(f"`{key}` must be a mapping of its options (`tunelab config` lists them), got {block!r}")
        return None
    return build(cls, block, key, problems)


def validate(cfg: RunConfig) -> list[str]:
    """Cross-field rules and names, checked together; returns every problem found."""
    problems = []
    if cfg.task not in TASKS:
        problems.append(f"`task`: {TASKS.unknown(cfg.task)}")
    else:
        task = TASKS.get(cfg.task)
        method = METHODS.get(cfg.method.name)
        if not method.supports(cfg.task):
            problems.append(f"method {cfg.method.name!r} does not support task {cfg.task!r}; methods for it: "
                            f"{', '.join(n for n, m in METHODS.items() if m.supports(cfg.task))}")
        if cfg.train.fsdp and cfg.method.name != "full":
            problems.append(f"`train.fsdp` (FSDP, set by torchrun's train.fsdp=true or an accelerate config with "
                            f"distributed_type: FSDP) shards full fine-tuning only, got method {cfg.method.name!r}; "
                            f"set method.name=full, or train {cfg.method.name} data-parallel without sharding "
                            f"(torchrun, or configs/distributed/ddp.yaml)")
        metric = cfg.train.early_stopping.metric
        if metric is not None and metric not in task.metric_names:
            problems.append(f"`train.early_stopping.metric` {metric!r} is not a {cfg.task} metric; choose one of: "
                            f"{', '.join(task.metric_names)}")
        builtin_task = DATASETS.get(cfg.data.source).task if cfg.data.source in DATASETS else None
        # A built-in dataset of another task serves only a task that reads its rows the same way (classification
        # data for regression, say); generation and QA rows carry fields of their own.
        if builtin_task and builtin_task != cfg.task and type(task).examples is not type(TASKS.get(builtin_task)).examples:
            problems.append(f"`data.source` {cfg.data.source!r} is a {DATASETS.get(cfg.data.source).task} dataset, "
                            f"not one for task {cfg.task!r}")
        if cfg.data.languages and "languages" not in (DATASETS.get(cfg.data.source).options
                                                      if cfg.data.source in DATASETS else ()):
            problems.append(f"`data.languages` applies to the built-in bible_parallel only, not to "
                            f"{cfg.data.source!r}; remove it")
        elif cfg.data.source in DATASETS:  # the dataset checks its own options (bible_parallel: the languages)
            problems += DATASETS.get(cfg.data.source).problems(cfg.data)
        problems += task.config_problems(cfg)  # the task's own rules
        missing_roles = [r for r in task.required_columns if r not in cfg.data.columns]
        if missing_roles and cfg.data.source not in DATASETS:
            problems.append(f"`data.columns` must name the {', '.join(missing_roles)} column(s) for {cfg.task}")
    for name, block in cfg.methods.items():
        if name not in METHODS:
            problems.append(f"`methods.{name}`: {METHODS.unknown(name)}")
        elif isinstance(block, dict):
            own = {k: v for k, v in block.items() if k != "train"}
            build(METHODS.get(name).Options, own, f"methods.{name}", problems)
            if isinstance(block.get("train"), dict):  # that method's replacements of the shared `train:` keys
                build(TrainConfig, block["train"], f"methods.{name}.train", problems)
            elif "train" in block:
                problems.append(f"`methods.{name}.train` must be a mapping of train options, got {block['train']!r}")
        else:
            problems.append(f"`methods.{name}` must be a mapping of {name}'s options, got {block!r}")
    problems += space_problems(cfg)
    if cfg.model not in MODELS and not Path(cfg.model).is_dir():
        problems.append(f"`model`: {cfg.model!r} is neither a built-in alias ({', '.join(MODELS.names())}) "
                        f"nor a local model folder")
    source = cfg.data.source
    if source not in DATASETS and not Path(source).exists():
        problems.append(f"`data.source`: {source!r} is neither a built-in dataset ({', '.join(DATASETS.names())}) "
                        f"nor an existing file or folder")
    output = folder_problem(cfg.output, "output")
    if output:
        problems.append(output)
    for key in ("validation_file", "test_file"):
        path = getattr(cfg.data, key)
        if path is not None and not Path(path).is_file():
            problems.append(f"`data.{key}`: file {path!r} not found")
    split = cfg.data.split
    cut = (split.validation if cfg.data.validation_file is None else 0) + (split.test if cfg.data.test_file is None else 0)
    if cut >= 0.9:
        problems.append(f"`data.split` holds out {cut:.0%} of the examples; keep validation + test below 90%")
    return problems


def space_problems(cfg: RunConfig) -> list[str]:
    """Every problem of `tune.space`, for `validate`."""
    problems = []
    for method, space in cfg.tune.space.items():
        key = f"`tune.space.{method}`"
        if method not in METHODS:
            problems.append(f"{key}: {METHODS.unknown(method)}")
            continue
        if METHODS.get(method).default_learning_rate is None:
            problems.append(f"{key}: {method} trains nothing, so it has no hyper-parameters to search; remove it")
            continue
        if not isinstance(space, dict) or not space:
            problems.append(f"{key} must map parameter names to {{low, high, log}} or {{choices}}, got {space!r}")
            continue
        options = {f.name for f in dataclasses.fields(METHODS.get(method).Options)}
        for name, spec in space.items():
            if name not in TRAIN_PARAMS and name not in options:
                problems.append(f"{key}.{name}: not a parameter of {method}; choose from "
                                f"{', '.join([*TRAIN_PARAMS, *sorted(options)])}")
            else:
                problems += [f"{key}.{name} {p}" for p in _spec_problems(spec)]
    return problems


def _spec_problems(spec: Any) -> list[str]:
    if not isinstance(spec, dict):
        return [f"must be {{low, high, log}} or {{choices: [...]}}, got {spec!r}"]
    if "choices" in spec:
        extra = set(spec) - {"choices"}
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            return ["`choices` must be a non-empty list"]
        return [f"takes `choices` alone; remove {', '.join(sorted(extra))}"] if extra else []
    extra = set(spec) - {"low", "high", "log"}
    if extra or not {"low", "high"} <= set(spec):
        return [f"must be {{low, high, log}} or {{choices: [...]}}, got {spec!r}"]
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
        return [f"needs numbers low < high, got low {low!r}, high {high!r}"]
    if spec.get("log") and low <= 0:
        return [f"is log-scaled, so `low` must be positive, got {low!r}"]
    return []
