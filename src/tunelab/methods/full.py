"""Full fine-tuning: every weight trained, optionally with the embeddings and lowest layers frozen.

Saved with `save_pretrained` as a plain Hugging Face folder that `AutoModelFor*.from_pretrained`
loads, safetensors only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..training import fsdp
from ..typed import non_negative, option
from .base import TrainedMethod
from .registry import register


@dataclass
class FullOptions:
    freeze_layers: int = option(0, "Freeze the embeddings and the lowest N transformer layers (0: train all).",
                                non_negative)


def transformer_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The stack of transformer blocks, found through the modules (no per-model code)."""
    n_layers = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return name, module
    raise ConfigError(f"cannot find the {n_layers} transformer layers of {type(model).__name__}")


@register
class FullFineTuning(TrainedMethod):
    name = "full"
    Options = FullOptions
    family = "full"
    default_learning_rate = 5e-5
    search_space = {"freeze_layers": {"choices": [0, 1, 2]}}
    description = "every weight trained (optionally freezing the lowest layers)"

    def prepare(self, model: nn.Module, head_modules: list[str], task_type: str = "SEQ_CLS") -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        n = self.options.freeze_layers
        if n:
            layers_name, layers = transformer_layers(model)
            if n > len(layers):
                raise ConfigError(f"`method.freeze_layers` is {n} but the model has {len(layers)} layers")
            frozen = [f"{layers_name}.{i}." for i in range(n)]
            for name, p in model.named_parameters():
                if "embed" in name or any(name.startswith(f) for f in frozen):
                    p.requires_grad_(False)
        return model

    def save(self, folder: Path | None) -> None:
        # Sharded (FSDP): every process gives its shards, rank 0 writes the whole weights.
        weights = fsdp.full_state_dict(self.model) if fsdp.is_sharded(self.model) else None
        if folder is not None:
            self.save_model(self.model, folder, weights)

    def save_model(self, model: nn.Module, folder: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        model.save_pretrained(folder, state_dict=weights, safe_serialization=True)

    def load_model(self, folder: Path, load_base: Callable[..., nn.Module]) -> nn.Module:
        return load_base(folder)
