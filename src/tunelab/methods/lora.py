"""LoRA and other `peft` methods: the base weights frozen, small added weights trained.

LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685) learns a low-rank update of a frozen
weight: h = W x + (alpha / r) · B A x, with A ∈ R^{r×d}, B ∈ R^{k×r}, B initialised to zero so
training starts from the base model. DoRA (`use_dora`) splits W into magnitude and direction.
IA3 (Liu et al. 2022, https://arxiv.org/abs/2205.05638) rescales keys, values and feed-forward
activations with learned vectors. All of it runs through the `peft` library; the task head is
trained too (`modules_to_save`). Saved as a PEFT adapter folder that `PeftModel.from_pretrained`
loads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..training.precision import device
from ..typed import fraction, option, positive
from .base import TrainedMethod
from .registry import register


@dataclass
class LoraOptions:
    r: int = option(8, "Rank of the update B·A.", positive)
    alpha: float = option(16.0, "Scale numerator: the update is multiplied by alpha / r.", positive)
    dropout: float = option(0.1, "Dropout on the LoRA branch's input. Above 0, each adapted layer keeps a "
                            "dropped-out copy of its input for the backward pass; 0 saves that memory (README: "
                            "8.3 → 6.5 GB peak for SmolLM2 translation).", fraction)
    target_modules: list[str] | None = option(None, "Names of the linear layers to adapt. Unset: peft's default "
                                              "for the architecture (query, value for BERT; q_proj, v_proj for "
                                              "Llama).")
    use_dora: bool = option(False, "Weight-decomposed LoRA (DoRA).")
    quantize: Literal["4bit"] | None = option(None, "`4bit`: QLoRA (Dettmers et al. 2023), the frozen base weights "
                                              "loaded in 4-bit NF4 through bitsandbytes (CUDA only; `pip install "
                                              "bitsandbytes`), the LoRA weights trained in full precision. Unset: "
                                              "the base weights in full precision.")


@dataclass
class Ia3Options:
    target_modules: list[str] | None = option(None, "Layers whose activations are rescaled. Unset: peft's default "
                                              "for the architecture.")
    feedforward_modules: list[str] | None = option(None, "Which of target_modules are feed-forward layers (scaled "
                                                   "on their input). Unset: peft's default.")


class PeftMethod(TrainedMethod):
    """Shared by every method that `peft` implements: wrap, save and load the PEFT way."""

    def peft_config(self, head_modules: list[str], task_type: str):
        """The peft config; pass a copy of `head_modules`: peft extends the list it is given in place."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, head_modules: list[str], task_type: str = "SEQ_CLS") -> nn.Module:
        from peft import get_peft_model
        try:
            return get_peft_model(model, self.peft_config(head_modules, task_type))
        except ValueError as e:  # e.g. a target module that the model does not have
            raise ConfigError(f"method {self.name}: {e}") from None

    def save_model(self, model: nn.Module, folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)

    def load_model(self, folder: Path, load_base: Callable[..., nn.Module]) -> nn.Module:
        from peft import PeftModel
        return PeftModel.from_pretrained(load_base(), folder)


@register
class Lora(PeftMethod):
    name = "lora"
    Options = LoraOptions
    default_learning_rate = 5e-4
    # alpha/r is the update's scale: the pairs cover scales 0.5–8.
    search_space = {"r": {"choices": [4, 8, 16]}, "alpha": {"choices": [8, 16, 32]}}
    description = "low-rank updates of frozen weights, through peft (use_dora for DoRA)"

    def setup(self, run) -> None:
        # Before the model loads: a CPU machine, or one without bitsandbytes, is refused in one line.
        self.quantization = quantization_config(self.options.quantize)
        super().setup(run)

    def load_options(self) -> dict[str, Any]:
        if getattr(self, "quantization", None) is None:
            # A finished QLoRA run (eval, predict, serve) loads its adapter on the full-precision base.
            return {}
        return {"quantization_config": self.quantization, "device_map": {"": device().index or 0}}

    def prepare(self, model: nn.Module, head_modules: list[str], task_type: str = "SEQ_CLS") -> nn.Module:
        if getattr(self, "quantization", None) is not None:
            from peft import prepare_model_for_kbit_training  # norms in fp32, input gradients for checkpointing
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return super().prepare(model, head_modules, task_type)

    def peft_config(self, head_modules: list[str], task_type: str):
        from peft import LoraConfig
        o = self.options
        return LoraConfig(r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout, target_modules=o.target_modules,
                          use_dora=o.use_dora, modules_to_save=list(head_modules), task_type=task_type)


@register
class Ia3(PeftMethod):
    name = "ia3"
    Options = Ia3Options
    default_learning_rate = 3e-3
    description = "learned rescaling of keys, values and feed-forward activations, through peft"

    def peft_config(self, head_modules: list[str], task_type: str):
        from peft import IA3Config
        o = self.options
        return IA3Config(target_modules=o.target_modules, feedforward_modules=o.feedforward_modules,
                         modules_to_save=list(head_modules), task_type=task_type)


def quantization_config(quantize: str | None):
    """The `BitsAndBytesConfig` of `method.quantize` (None when unset); a machine that cannot run it is a
    one-line `ConfigError` that names the key and the fix."""
    if quantize is None:
        return None
    if device().type != "cuda":
        raise ConfigError(f"`method.quantize: {quantize}` (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels do "
                          f"not run on this machine's CPU; remove method.quantize (or set method.quantize=null) to "
                          f"train LoRA on full-precision weights here")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"`method.quantize: {quantize}` (QLoRA) needs the bitsandbytes package, which is not "
                          f"installed: `pip install bitsandbytes`, or remove method.quantize") from None
    from transformers import BitsAndBytesConfig
    # NF4 with double quantization and bf16 compute: the QLoRA paper's recipe.
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported()
                              else torch.float16)
