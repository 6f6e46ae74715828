"""Glue between a config and the axes: load the model a method needs, fit it, and score examples.

`Adapted` is what a fitted (or reloaded) method gives back: something that scores examples. The
runner, `eval` and `predict` all go through it, so a saved run predicts exactly as it did at the
end of training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import models
from .config import RunConfig
from .data import Example, Splits
from .errors import ConfigError
from .methods import METHODS, Method, TrainedMethod, count_parameters, head_modules
from .tasks import Task, task_for
from .training.batches import Batches
from .training.checkpoint import Checkpoint
from .training.loop import TrainState, train
from .training.memory import enable_gradient_checkpointing
from .training.precision import device, resolve


@dataclass
class Adapted:
    cfg: RunConfig
    task: Task
    labels: list[str]
    method: Method
    tokenizer: Any
    model: nn.Module
    precision: str
    newly_initialised: list[str]
    trained_heads: list[str]
    state: TrainState | None = None

    def scores(self, examples: list[Example], with_loss: bool = False) -> tuple[np.ndarray, float | None]:
        if not self.method.trains:
            return self.method.outputs(examples, with_loss)
        return self.task.outputs(self.model, self.tokenizer, examples, self.labels,
                                 max_length=self.cfg.data.max_length, batch_size=self.cfg.train.eval_batch_size,
                                 precision=self.precision, device=device(), with_loss=with_loss)

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
        counts = count_parameters(self.model)
        if not self.method.trains:
            counts["trainable"] = 0
        counts["trainable_percent"] = round(100 * counts["trainable"] / counts["total"], 4)
        return counts


def base_loader(cfg: RunConfig, task: Task, labels: list[str], tokenizer) -> Callable[..., nn.Module]:
    """A function that loads a fresh base task model (or one saved in `folder`), seeded and quiet."""
    default = models.resolve(cfg.model)

    def load(folder: Path | None = None) -> nn.Module:
        torch.manual_seed(cfg.train.seed)  # the new head's initialisation is part of the run's seed
        model, missing = models.load_model(task.auto_class(), Path(folder or default),
                                           allow_unsafe=cfg.allow_unsafe_weights, dropout=cfg.train.dropout,
                                           **task.model_kwargs(labels))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # decoders pool the last non-pad token
        load.newly_initialised = missing
        task.bind(model)
        return model

    load.newly_initialised = []
    return load


def prepare(cfg: RunConfig, splits: Splits, log: Callable[[str], None] = print) -> Adapted:
    """Load the model the method needs and make it ready: frozen, wrapped, or attached to a scorer."""
    task = task_for(cfg)
    method = METHODS.get(cfg.method.name)(cfg.method.options)
    folder = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(folder)
    if not method.trains:
        model = _load_prompt_model(method, folder, cfg, tokenizer, splits.labels, task)
        return Adapted(cfg, task, splits.labels, method, tokenizer, model, method.scorer.precision, [], [])
    load = base_loader(cfg, task, splits.labels, tokenizer)
    model = load()
    heads = head_modules(model, load.newly_initialised)
    model = method.prepare(model, heads, task.peft_task_type).to(device())
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(model, cfg.model)
    precision = resolve(cfg.train.precision, device())
    return Adapted(cfg, task, splits.labels, method, tokenizer, model, precision, load.newly_initialised, heads)


def fit(cfg: RunConfig, splits: Splits, log: Callable[[str], None] = print,
        adapted: Adapted | None = None, checkpoint: Checkpoint | None = None, resume: bool = False,
        on_evaluation: Callable[[float, float], None] | None = None, first_epoch_reports: int = 1) -> Adapted:
    """Adapt the model to the training split with the configured method (prepared here unless given).

    Trained methods save a `checkpoint` as they go (when given); `resume` continues from it; `on_evaluation`
    hears each epoch's validation metric, and `first_epoch_reports` - 1 more during the first epoch
    (`training.loop.train`)."""
    adapted = adapted or prepare(cfg, splits, log)
    metric = cfg.train.early_stopping.metric or adapted.task.default_metric
    method = adapted.method
    if not method.trains:
        method.fit(splits.train, splits.validation, adapted.task, metric)
        log(f"prompt search: {len(method.search)} candidates on {method.search_examples} validation examples; "
            "chose " + ", ".join(f"{k} {v!r}" for k, v in method.chosen.row().items()))
        return adapted

    assert isinstance(method, TrainedMethod)
    p = adapted.parameters()
    log(f"{cfg.method.name}: training {p['trainable']:,} of {p['total']:,} weights ({p['trainable_percent']:.2f}%) "
        f"on {len(splits.train)} examples, {adapted.precision} on {device().type}")
    lr = cfg.train.learning_rate or method.default_learning_rate
    train_batches = Batches(adapted.task, adapted.tokenizer, splits.train, splits.labels, cfg.data.max_length)
    adapted.state = train(adapted.model, train_batches, lambda: adapted.evaluate(splits.validation), cfg.train, lr,
                          metric, adapted.task.better, adapted.precision, device(), log, checkpoint, resume,
                          on_evaluation, first_epoch_reports)
    adapted.model.eval()
    return adapted


def _load_prompt_model(method, folder: Path, cfg: RunConfig, tokenizer, labels: list[str], task: Task):
    """The model a prompt method scores with: the bare encoder, or a decoder with its language-model head."""
    from transformers import AutoModel, AutoModelForCausalLM

    from .methods.prompt import scorer_for
    family = models.family(folder)
    if family == "encoder" and task.label_kind == "text":
        raise ConfigError(f"method prompt generates answers for task generation, and {cfg.model} is an encoder, "
                          f"which does not generate; use a decoder model such as smollm2-135m")
    if family == "encoder":
        model, _ = models.load_model(AutoModel, folder, allow_unsafe=cfg.allow_unsafe_weights)
        precision = "fp32"
    else:
        # A folder without a language-model head (a bare `AutoModel` save) gets a random one: seed it, so that
        # a reload scores exactly as the run did.
        torch.manual_seed(cfg.train.seed)
        model, _ = models.load_model(AutoModelForCausalLM, folder, allow_unsafe=cfg.allow_unsafe_weights)
        model.to(device())
        precision = resolve(cfg.train.precision, device())
    task.bind(model)
    model.eval()
    method.attach(scorer_for(family, model, tokenizer, method.options, cfg.data.max_length,
                             cfg.train.eval_batch_size, precision, task), labels)
    return model


def reload(cfg: RunConfig, run_folder: Path, labels: list[str]) -> Adapted:
    """The adapted model of a finished run, from its saved files."""
    task = task_for(cfg)
    method = METHODS.get(cfg.method.name)(cfg.method.options)
    folder = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(folder)
    saved = run_folder / "model"
    if not method.trains:
        model = _load_prompt_model(method, folder, cfg, tokenizer, labels, task)
        method.load(saved, method.scorer)
        return Adapted(cfg, task, labels, method, tokenizer, model, method.scorer.precision, [], [])
    load = base_loader(cfg, task, labels, tokenizer)
    model = method.load(saved, load)
    model.to(device()).eval()
    return Adapted(cfg, task, labels, method, tokenizer, model, resolve(cfg.train.precision, device()),
                   load.newly_initialised, [])
