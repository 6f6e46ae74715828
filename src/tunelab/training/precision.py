"""Choosing the compute device and precision."""
from __future__ import annotations

import contextlib
import time
from functools import lru_cache

import torch
from torch import nn

from . import distributed


def device() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    _attention_without_cudnn()
    return torch.device("cuda")


@lru_cache(maxsize=1)
def _attention_without_cudnn() -> None:
    """Once a process, before anything runs on the GPU: SDPA attention without its cuDNN kernel, keeping the flash
    and memory-efficient ones.

    cuDNN's attention (bf16/fp16 only) builds a plan for each new input shape, and tunelab pads each batch to its own
    length, so the shapes keep changing and it plans again nearly every step. Measured on an H200 (MiniLM LoRA on
    Rotten Tomatoes, bf16, tunelab's loop, torch 2.11): 146 examples/s with it, 539 without; the profile showed
    6.7 ms per attention call and a backward pass 6x that of fp32, which never uses that kernel. This is a
    process-wide PyTorch setting: a program that imports tunelab and wants cuDNN attention back can call
    `torch.backends.cuda.enable_cudnn_sdp(True)` after tunelab has picked its device."""
    torch.backends.cuda.enable_cudnn_sdp(False)


# bf16 must beat fp32 by this much to be chosen: a clear gain, not timing noise (~3x reported on the machines
# this was built on, 0.5x measured on another).
BF16_MIN_SPEEDUP = 1.3


def cpu_has_bf16_instructions() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@torch.no_grad()
def linear_seconds(dtype: torch.dtype) -> float:
    """The best of three timings of one linear layer of a small transformer's size (1,024 tokens, 576 → 1,536)."""
    # Its own generator: timing must not move the global RNG, or a run's initialisation would depend on whether
    # this process had timed already (a comparison trains several methods in one process).
    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(1024, 576, generator=generator), torch.randn(1536, 576, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        torch.nn.functional.linear(x, w)  # warm-up: oneDNN builds its kernel on the first call
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            torch.nn.functional.linear(x, w)
            timings.append(time.perf_counter() - started)
    return min(timings)


@lru_cache(maxsize=1)
def cpu_bf16_is_faster() -> bool:
    """Whether bf16 autocast runs faster than fp32 on this CPU, timed once a process (~0.1 s).

    The CPU flags alone do not say: on the machines this was built on, bf16 linear layers ran ~3x fp32; on
    another with the same AVX512-BF16 flag (and no AMX flags) they took twice as long as fp32, and choosing bf16 by
    the flag made the tests take 11 min 37 s instead of 9 min 3 s.
    """
    if not cpu_has_bf16_instructions():
        return False
    return linear_seconds(torch.float32) / linear_seconds(torch.bfloat16) >= BF16_MIN_SPEEDUP


def resolve(precision: str, dev: torch.device) -> str:
    """`auto` → bf16 where the hardware runs it faster than fp32, else fp32.

    bf16 is used through autocast: weights and optimizer state stay fp32, so accuracy holds.
    """
    if precision != "auto":
        return precision
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    # Timed: in data-parallel training rank 0's choice holds for all, or the processes would train differently.
    return distributed.agree("bf16" if cpu_bf16_is_faster() else "fp32")


def pad_multiple(precision: str) -> int:
    """What batch widths are rounded up to a multiple of (classification and regression batches).

    bf16: 8. On a CPU, oneDNN runs bf16 matrix products and builds and caches a primitive per shape: length-grouped
    batches take every width from the shortest input to the longest, and the cache held about 400 MB of a MiniLM
    LoRA run's 1.6 GB peak; with eight times fewer widths the peak was 982 MB against 1,618, in the same time (one
    epoch on the demo's data). On a GPU, bf16 tensor cores want multiples of 8 (as `DataCollatorWithPadding(
    pad_to_multiple_of=8)` is used for mixed precision).
    fp32: 1, exact widths. On a CPU without fast bf16, fp32 products run in MKL, whose per-shape cost is small, and
    the padded positions are only work. Alternating pairs, unpadded against padded (`bench/speed.py --child`, fp32,
    seed 0, examples/s): MiniLM LoRA 128/105, 102/81, 96/103, 119/106, 109/113 (geometric mean x1.09); full
    fine-tuning 87/73, 82/82 (x1.09); SmolLM2 LoRA 12.3/11.4, 11.9/12.3 (x1.02). A small gain within this
    machine's noise of +-10%, and peak memory equal within 20 MiB, so nothing is padded that need not be."""
    return 8 if precision == "bf16" else 1


def to_device(batch: dict[str, torch.Tensor], dev: torch.device) -> dict[str, torch.Tensor]:
    """A batch's tensors on `dev`. To a GPU they go through pinned (page-locked) host memory without blocking, as
    a `DataLoader(pin_memory=True)` does: the copy is a DMA transfer the GPU queues behind its work, so the host
    goes on preparing the next step instead of waiting for the copy."""
    if dev.type != "cuda":
        return {k: v.to(dev) for k, v in batch.items()}
    return {k: v.pin_memory().to(dev, non_blocking=True) for k, v in batch.items()}


def autocast(precision: str, dev: torch.device):
    if precision == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class FrozenLinear(nn.Linear):
    """`nn.Linear` whose frozen weight is also kept in bf16 (`weight_bf16`) while bf16 autocast uses it.

    Autocast casts a weight to bf16 at every call and keeps the copy only for weights that are trained (its cache
    holds leaf tensors that require a gradient), so a frozen weight is cast again at every forward pass: in a
    MiniLM LoRA step in bf16 the frozen weights' casts were 4% of the step (torch profiler), in SmolLM2's more.
    Cast once, the product is the same: autocast rounds the same fp32 weight to the same bf16 one. Outside bf16
    autocast, the fp32 weight is used as before."""

    weight_bf16: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type) and torch.get_autocast_dtype(x.device.type) == torch.bfloat16:
            return nn.functional.linear(x, self.weight_bf16, self.bias)  # autocast casts x and the bias
        return super().forward(x)


@contextlib.contextmanager
def frozen_weights_cast(model: nn.Module, precision: str, dev: torch.device):
    """Within: the frozen fp32 `nn.Linear` weights of `model` also held in bf16 (`FrozenLinear`), when training in
    bf16 on a CPU. The copies are dropped at the end, before anything may change those weights (merging LoRA
    into them, say). On a GPU the casts are cheap next to the memory the copies would take (half the frozen
    weights again), which is what bounds the model's size there."""
    swapped = []
    if precision == "bf16" and dev.type == "cpu":
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if (type(module) is nn.Linear and type(weight) is nn.Parameter and not weight.requires_grad
                    and weight.dtype == torch.float32):
                module.__class__ = FrozenLinear
                module.weight_bf16 = weight.detach().to(torch.bfloat16)
                swapped.append(module)
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            module.__class__ = nn.Linear
            del module.weight_bf16
