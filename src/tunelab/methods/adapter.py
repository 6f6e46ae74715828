"""Bottleneck adapters, inserted into any BERT- or Llama-style model through its modules.

Houlsby et al. 2019 (https://arxiv.org/abs/1902.00751) add an adapter after the attention
block and after the feed-forward block of every layer; Pfeiffer et al. 2020
(https://arxiv.org/abs/2005.00247) keep only the one after the feed-forward block. An adapter is

    h ← h + W_up · f(W_down · h),   W_down ∈ R^{d/m × d}, W_up ∈ R^{d × d/m}

with reduction factor m and non-linearity f, applied to a sub-layer's output before the
residual connection. W_up starts at zero, so the adapted model equals the base model before
training. Only adapters and the task head are trained. (AdapterHub's `adapters` pins an older
transformers, hence our own.) Saved as `adapter.safetensors` + `adapter_config.json`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError, TunelabError
from ..typed import option, positive
from .base import TrainedMethod, freeze_all, set_trainable
from .registry import register

# Output projections of the attention and feed-forward sub-layers, by family naming convention.
ATTENTION_OUTPUTS = ("attention.output.dense", "self_attn.o_proj", "attn.c_proj", "attn.out_proj")
FEEDFORWARD_OUTPUTS = ("output.dense", "mlp.down_proj", "mlp.c_proj", "mlp.fc2", "fc2")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}


@dataclass
class AdapterOptions:
    kind: Literal["houlsby", "pfeiffer"] = option("houlsby", "houlsby: after attention and feed-forward; "
                                                  "pfeiffer: after feed-forward only.")
    reduction_factor: int = option(16, "Hidden size ÷ bottleneck size.", positive)
    non_linearity: Literal["relu", "gelu", "swish", "tanh"] = option("relu", "Activation inside the bottleneck.")


class Bottleneck(nn.Module):
    def __init__(self, size: int, reduction_factor: int, non_linearity: str):
        super().__init__()
        hidden = max(1, size // reduction_factor)
        self.down = nn.Linear(size, hidden)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(hidden, size)
        nn.init.zeros_(self.up.weight)  # identity at start: adapted model == base model
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class WithAdapter(nn.Module):
    """A sub-layer's output projection followed by its adapter."""

    def __init__(self, projection: nn.Linear, adapter: Bottleneck):
        super().__init__()
        self.projection = projection
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.projection(x))


def adapter_sites(model: nn.Module, kind: str) -> list[str]:
    """Names of the linear layers an adapter follows."""
    sites = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        is_attention = name.endswith(ATTENTION_OUTPUTS)
        is_feedforward = name.endswith(FEEDFORWARD_OUTPUTS) and not is_attention
        if is_feedforward or (kind == "houlsby" and is_attention):
            sites.append(name)
    return sites


def insert_adapters(model: nn.Module, options: AdapterOptions) -> list[str]:
    sites = adapter_sites(model, options.kind)
    if not sites:
        raise ConfigError(f"method adapter: found no attention/feed-forward output layers in {type(model).__name__}; "
                          f"supported naming: {', '.join(ATTENTION_OUTPUTS + FEEDFORWARD_OUTPUTS)}")
    for name in sites:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        adapter = Bottleneck(linear.out_features, options.reduction_factor, options.non_linearity)
        adapter.to(device=linear.weight.device, dtype=linear.weight.dtype)
        setattr(parent, child, WithAdapter(linear, adapter))
    return sites


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


@register
class BottleneckAdapter(TrainedMethod):
    name = "adapter"
    Options = AdapterOptions
    default_learning_rate = 1e-3
    search_space = {"reduction_factor": {"choices": [8, 16, 32]}}
    description = "bottleneck adapters after attention/feed-forward blocks (Houlsby or Pfeiffer)"

    def prepare(self, model: nn.Module, head_modules: list[str], task_type: str = "SEQ_CLS") -> nn.Module:
        freeze_all(model)
        insert_adapters(model, self.options)
        for module in model.modules():
            if isinstance(module, Bottleneck):
                for p in module.parameters():
                    p.requires_grad_(True)
        set_trainable(model, head_modules)
        self.head_modules = head_modules  # saved with the adapters: a reload trains and restores the same heads
        return model

    def save_model(self, model: nn.Module, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(trained_state(model), folder / "adapter.safetensors")
        config = {"method": "adapter", **asdict(self.options),
                  "head_modules": self.head_modules}
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))

    def load_model(self, folder: Path, load_base: Callable[..., nn.Module]) -> nn.Module:
        config = json.loads((folder / "adapter_config.json").read_text())
        self.options = AdapterOptions(kind=config["kind"], reduction_factor=config["reduction_factor"],
                                      non_linearity=config["non_linearity"])
        model = self.prepare(load_base(), config.get("head_modules", []))
        state = load_file(folder / "adapter.safetensors")
        expected = set(trained_state(model))
        if set(state) != expected:
            raise TunelabError(f"{folder / 'adapter.safetensors'} does not match the model: "
                               f"{len(expected ^ set(state))} tensors differ; was it trained on another base model?")
        model.load_state_dict(state, strict=False)
        model.eval()
        return model
