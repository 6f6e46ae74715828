"""Glue between a config and the axes: the method a config names, set up on its task and model, fitted, and
scoring examples.

`Adapted` is what a fitted (or reloaded) method gives back: something that scores examples. The
runner, `eval` and `predict` all go through it, so a saved run predicts exactly as it did at the
end of training. Every method, prompt or trained, goes through the same calls (`methods/base.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from . import models
from .config import RunConfig
from .data import Example, Splits, load_splits
from .methods import METHODS, Method, Run
from .tasks import Task, task_for
from .training.checkpoint import Checkpoint
from .training.loop import Hooks
from .training.state import TrainState


@dataclass
class Adapted:
    cfg: RunConfig
    task: Task
    labels: list[str]
    method: Method
    tokenizer: Any
    state: TrainState | None = None  # the training's, for methods that train

    @property
    def model(self) -> nn.Module:
        return self.method.model

    @property
    def precision(self) -> str:
        return self.method.precision

    @property
    def newly_initialised(self) -> list[str]:
        return self.method.newly_initialised

    @property
    def trained_heads(self) -> list[str]:
        return self.method.head_modules

    def scores(self, examples: list[Example], with_loss: bool = False) -> tuple[Any, float | None]:
        """The task's outputs for `examples` (label scores, answers, generated texts) and the mean loss if asked."""
        return self.method.outputs(examples, with_loss)

    def evaluate(self, examples: list[Example]) -> dict[str, Any]:
        return self.evaluate_with_outputs(examples)[0]

    def evaluate_with_outputs(self, examples: list[Example]) -> tuple[dict[str, Any], Any]:
        """Metrics and the outputs they came from (for the per-example rows that bootstrap intervals resample)."""
        scores, loss = self.scores(examples, with_loss=True)
        metrics = self.task.metrics(scores, examples, self.labels)
        if loss is not None:
            metrics["loss"] = loss
        return metrics, scores

    def parameters(self) -> dict[str, Any]:
        counts = self.method.parameters()
        counts["trainable_percent"] = round(100 * counts["trainable"] / counts["total"], 4)
        return counts


def data_for(cfg: RunConfig, task) -> Splits:
    """The run's splits, every data check done before a model is loaded."""
    splits = load_splits(cfg.data, task)
    if task.checks_data:  # and those that need the task's options or tokenizer (a QA question too long for its window)
        task.check_data(models.load_tokenizer(models.resolve(cfg.model)), splits, cfg.data.max_length)
    return splits


def _method(cfg: RunConfig, labels: list[str]) -> tuple[Method, Run]:
    return METHODS.get(cfg.method.name)(cfg.method.options), Run.of(cfg, task_for(cfg), labels)


def prepare(cfg: RunConfig, splits: Splits, log: Callable[[str], None] = print) -> Adapted:
    """Load the model the method needs and make it ready: frozen, wrapped, or attached to a scorer."""
    method, run = _method(cfg, splits.labels)
    method.setup(run)
    return Adapted(cfg, run.task, splits.labels, method, run.tokenizer)


def fit(cfg: RunConfig, splits: Splits, log: Callable[[str], None] = print,
        adapted: Adapted | None = None, checkpoint: Checkpoint | None = None, resume: bool = False,
        on_evaluation: Callable[[float, float], None] | None = None, first_epoch_reports: int = 1,
        hooks: Hooks | None = None) -> Adapted:
    """Adapt the model to the training split with the configured method (prepared here unless given).

    Methods that train save a `checkpoint` as they go (when given); `resume` continues from it; `on_evaluation`
    hears each epoch's validation metric, and `first_epoch_reports` - 1 more during the first epoch
    (`training.loop.train`); `hooks` hear the training's start and history (experiment tracking)."""
    adapted = adapted or prepare(cfg, splits, log)
    adapted.state = adapted.method.fit(splits, log, checkpoint=checkpoint, resume=resume,
                                       on_evaluation=on_evaluation, first_epoch_reports=first_epoch_reports,
                                       hooks=hooks)
    return adapted


def reload(cfg: RunConfig, run_folder: Path, labels: list[str]) -> Adapted:
    """The adapted model of a finished run, from its saved files."""
    method, run = _method(cfg, labels)
    method.load(run, run_folder / "model")
    return Adapted(cfg, run.task, labels, method, run.tokenizer)
