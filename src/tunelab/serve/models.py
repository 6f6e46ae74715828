"""The runs a service answers for, loaded once: each base model once, every LoRA/IA3 run on it as a named adapter
of one `PeftModel`, and full, bottleneck-adapter and prompt runs through `pipeline.reload` as `tunelab predict`
loads them.

PEFT runs that can share a model are those of one peft method on the same base folder and task with the same
label set (the classification head's shape): `PeftModel.load_adapter` adds each to the first one's model, and the
worker selects a run's adapter with `set_adapter` before its batch. Its task head travels with it
(`modules_to_save` keeps one copy per adapter), so each adapter predicts as the run did alone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import models
from ..api import _load_run
from ..config import RunConfig
from ..data import Example
from ..errors import TunelabError
from ..methods import METHODS, Run
from ..pipeline import Adapted, reload
from ..tasks import task_for
from ..training.precision import device, resolve

PEFT_METHODS = ("lora", "ia3")  # saved with `PeftModel.save_pretrained`: several can share one base model
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


@dataclass
class RunSpec:
    """A RUN argument, checked: its model name, folder, config and labels (nothing loaded yet)."""
    name: str
    folder: Path
    cfg: RunConfig
    labels: list[str]


@dataclass
class Served:
    """One named model the service answers for."""
    spec: RunSpec
    adapted: Adapted
    adapter: str | None = None  # its adapter's name in a shared PeftModel, selected before each batch

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def task(self):
        return self.adapted.task

    def predict(self, examples: list[Example]) -> list[dict[str, Any]]:
        """`tunelab predict`'s rows for `examples`; called from the one worker thread only, since selecting an
        adapter changes the model that the other runs of its base share."""
        if self.adapter is not None:
            self.adapted.model.set_adapter(self.adapter)
        outputs, _ = self.adapted.scores(examples)
        return list(self.task.prediction_rows(examples, outputs, self.spec.labels))

    def describe(self) -> dict[str, Any]:
        cfg = self.spec.cfg
        return {"id": self.name, "object": "model", "owned_by": "tunelab", "task": cfg.task,
                "method": cfg.method.name, "base_model": cfg.model, "run": str(self.spec.folder),
                "labels": self.spec.labels, "shared_base": self.adapter is not None,
                "inputs": input_columns(cfg, self.task)}


def parse_specs(arguments: list[str]) -> list[RunSpec]:
    """`RUN` or `NAME=RUN` arguments → checked specs, every one before any model loads, so that a mistake ends
    the command at once. The model name of a run is its folder's name unless given."""
    specs, seen = [], {}
    for argument in arguments:
        name, path = None, argument
        if "=" in argument and not Path(argument).exists():
            name, path = argument.split("=", 1)
            if not NAME.fullmatch(name):
                raise TunelabError(f"model name {name!r} in {argument!r}: use letters, digits and . _ : - "
                                   f"(NAME=RUN)")
        folder, cfg, labels = _load_run(path)
        if not (folder / "model").is_dir():
            raise TunelabError(f"{folder} has no model/ folder; the run did not finish, train it again")
        name = name or Path(folder).resolve().name
        if name in seen:
            raise TunelabError(f"two runs are named {name!r} ({seen[name]} and {argument}); name them apart "
                               f"with NAME=RUN")
        seen[name] = argument
        specs.append(RunSpec(name, Path(folder), cfg, labels))
    if not specs:
        raise TunelabError("give at least one run folder to serve")
    return specs


def load(specs: list[RunSpec], log=print) -> dict[str, Served]:
    """Every run loaded, PEFT runs of one base model as adapters of one model."""
    served: dict[str, Served] = {}
    shared: dict[tuple, Served] = {}  # the first PEFT run of each base: its model takes the others' adapters
    for spec in specs:
        key = _base_key(spec)
        first = shared.get(key) if key else None
        if first is None:
            adapted = reload(spec.cfg, spec.folder, spec.labels)
            served[spec.name] = Served(spec, adapted, "default" if key else None)  # peft's name for the first
            if key:
                shared[key] = served[spec.name]
            log(f"loaded {spec.name}: {spec.cfg.method.name} run {spec.folder} on {spec.cfg.model}")
        else:
            served[spec.name] = _as_adapter(spec, first)
            log(f"loaded {spec.name}: {spec.cfg.method.name} run {spec.folder}, an adapter on {first.name}'s "
                f"base model")
    return served


def _base_key(spec: RunSpec) -> tuple | None:
    """What PEFT runs must have in common to share one model; None for runs that load their own."""
    cfg = spec.cfg
    if cfg.method.name not in PEFT_METHODS:
        return None
    return (cfg.method.name, str(models.resolve(cfg.model)), cfg.task, tuple(spec.labels),
            cfg.allow_unsafe_weights)


def _as_adapter(spec: RunSpec, first: Served) -> Served:
    """`spec`'s adapter loaded into `first`'s PeftModel, with the method and task objects `reload` would build."""
    cfg = spec.cfg
    method = METHODS.get(cfg.method.name)(cfg.method.options)
    method.run = Run.of(cfg, task_for(cfg), spec.labels)
    model = first.adapted.model
    try:
        model.load_adapter(str(spec.folder / "model"), adapter_name=spec.name, is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as e:  # shapes or modules that do not fit the base
        raise TunelabError(f"{spec.folder}: its adapter does not fit the base model of {first.name}: "
                           f"{str(e).splitlines()[0]}") from None
    model.to(device()).eval()
    method.run.task.bind(model.get_base_model())  # as `reload` binds the task of a model it loads
    method.model = model
    method.precision = resolve(cfg.train.precision, device())
    return Served(spec, Adapted(cfg, method.run.task, spec.labels, method, method.run.tokenizer), spec.name)


def input_columns(cfg: RunConfig, task) -> list[str]:
    """The row keys a model reads, as `tunelab predict` reads them from a file."""
    columns = cfg.data.columns
    if cfg.task == "extractive_qa":
        return [columns.get(r, r) for r in ("question", "context")]
    if cfg.task == "generation":
        if "messages" in columns:
            return [columns["messages"]]
        role = "source" if "source" in columns else "prompt"
        return [columns.get(role, role)]
    return [columns.get("text", "text")] + ([columns["text_pair"]] if "text_pair" in columns else [])


def text_row(cfg: RunConfig, task, text: str) -> dict[str, Any]:
    """The row a lone text stands for: the model's one input column; tasks with several inputs need rows."""
    columns = input_columns(cfg, task)
    if len(columns) > 1:
        raise TunelabError(f"a {cfg.task} model reads {' and '.join(map(repr, columns))}: give rows, e.g. "
                           f"{{\"inputs\": [{{{', '.join(f'{c!r}: ...' for c in columns)}}}]}}".replace("'", '"'))
    if cfg.task == "generation" and "messages" in cfg.data.columns:
        return {columns[0]: [{"role": "user", "content": text}]}
    return {columns[0]: text}
