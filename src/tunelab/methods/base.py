"""What a method is: what it trains (or fits), and how it saves and loads what it learned.

Two kinds share one interface for the runner:
- `TrainedMethod`: `prepare` freezes/wraps a task model, the one training loop trains it, and
  `save`/`load` write the result in an ecosystem format.
- `PromptMethod` (prompt engineering): `fit` chooses prompts on the validation split without
  gradients, and `scores` ranks the labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

# Task heads of the Auto*ForSequenceClassification and Auto*ForQuestionAnswering classes. Named, not only found
# among the newly initialised modules: a checkpoint saved with a head would not report it missing.
HEAD_NAMES = ("classifier", "score", "pooler", "qa_outputs")


@dataclass
class NoOptions:
    """This method has no options of its own."""


class Method:
    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    tasks: ClassVar[tuple[str, ...]] = ("classification", "regression")
    trains: ClassVar[bool] = True
    family: ClassVar[str] = "peft"  # "prompt", "peft" or "full": the three families of the report
    description: ClassVar[str] = ""

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()


class TrainedMethod(Method):
    tasks: ClassVar[tuple[str, ...]] = ("classification", "regression", "extractive_qa", "generation")
    default_learning_rate: ClassVar[float] = 5e-4
    # The method's own hyper-parameters that `tunelab tune` searches besides the learning rate, in the
    # `tune.space` format: {option: {choices: [...]}} or {option: {low, high, log}}.
    search_space: ClassVar[dict[str, dict[str, Any]]] = {}

    def prepare(self, model: nn.Module, head_modules: list[str], task_type: str = "SEQ_CLS") -> nn.Module:
        """Freeze what is not trained (and wrap the model where the method needs to).

        `task_type` is peft's name for the task's model kind (`SEQ_CLS`, `CAUSAL_LM`: `Task.peft_task_type`);
        methods outside peft do not need it.
        """
        raise NotImplementedError

    def save(self, model: nn.Module, folder: Path) -> None:
        raise NotImplementedError

    def load(self, folder: Path, load_base: Callable[[], nn.Module]) -> nn.Module:
        """Rebuild the trained model from `folder`; `load_base()` gives a fresh base task model."""
        raise NotImplementedError


def head_modules(model: nn.Module, newly_initialised: list[str]) -> list[str]:
    """Modules every method trains: what the checkpoint did not provide, plus the task head.

    A frozen random head (or pooler) caps a PEFT method at the majority class, so the head is
    always trained, whatever the method.
    """
    names = set(newly_initialised)
    for name, _ in model.named_modules():
        if name.split(".")[-1] in HEAD_NAMES and not any(name.startswith(n + ".") for n in names):
            names.add(name)
    # Keep outermost modules only: training `classifier` covers `classifier.dense`.
    return sorted(n for n in names if not any(n.startswith(o + ".") for o in names if o != n))


def set_trainable(model: nn.Module, prefixes: list[str]) -> None:
    for name, param in model.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            param.requires_grad_(True)


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}


def freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


@torch.no_grad()
def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}
