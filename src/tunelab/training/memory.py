"""Memory: the peak of a run (the GPU allocator's peak, or the process's resident set sampled on CPU), and
gradient checkpointing, which trades recomputation for activation memory."""
from __future__ import annotations

import threading

import psutil
import torch

from ..errors import ConfigError


def enable_gradient_checkpointing(model, model_name: str) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them.

    Non-reentrant checkpointing: it needs no gradient on the inputs, so it works when the embeddings are
    frozen (LoRA, adapters) as well as in full fine-tuning.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{model_name} ({type(base).__name__}) does not support gradient checkpointing; set "
                          f"train.gradient_checkpointing: false")
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


class PeakMemory:
    """Context manager; `.peak_mb` is the highest memory seen while inside."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._process = psutil.Process()

    def __enter__(self) -> "PeakMemory":
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.peak_bytes = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return round(self.peak_bytes / 2**20, 1)

    @property
    def device_peak_mb(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None
