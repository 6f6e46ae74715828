"""A run's training in one object: what it trains and with what, and where it stands.

`Training` is what the loop (`loop.py`) advances one `step` at a time, what a checkpoint saves and what a resume
restores (`checkpoint.py`): nothing a resume needs lives anywhere else. `TrainState` is the part that is plain
data (the position, the early-stopping state, the history), saved as JSON and kept in the run's metrics.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from transformers import get_scheduler

from ..config import TrainConfig
from ..errors import TrainingError
from . import distributed, fsdp
from .dropout import use_cpu_attention, use_cpu_dropout
from .precision import autocast, to_device


@dataclass
class TrainState:
    """Where training stands; with the optimizer and scheduler states, enough to resume exactly."""
    epoch: int = 0  # epochs completed
    step: int = 0  # optimisation steps completed
    best_value: float | None = None
    best_epoch: int = 0
    best_step: int = 0
    evals_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_at_step: int | None = None  # set when the run continued from a checkpoint
    seconds_before_resume: float = 0.0  # training time spent before that, in the interrupted process(es)
    skipped_steps: int = 0  # steps whose update was dropped for a non-finite loss or gradient (on_nonfinite: skip)
    skipped_in_a_row: int = 0
    # The experiment trackers' runs (MLflow's run id), saved with the checkpoint: a resume continues the same run.
    tracking: dict[str, str] = field(default_factory=dict)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: decaying biases and LayerNorm gains only hurts."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class Training:
    model: nn.Module
    cfg: TrainConfig
    learning_rate: float
    optimizer: torch.optim.Optimizer
    scheduler: Any
    shuffle: torch.Generator  # the data order's own generator: the order does not depend on dropout
    precision: str
    device: torch.device
    total_steps: int
    state: TrainState = field(default_factory=TrainState)
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # the best evaluation's trainable weights
    epoch_rng: torch.Tensor | None = None  # the shuffle's state when the current epoch began: its batch order
    batches_done: int = 0  # batches of the current epoch already trained
    running: float = 0.0  # training loss summed since the last history record
    since_log: int = 0  # steps since that record
    started: float = field(default_factory=time.time)  # when this process began training
    trainable: list[torch.nn.Parameter] = field(default_factory=list)  # what the optimizer updates and clipping sees

    @classmethod
    def start(cls, model: nn.Module, cfg: TrainConfig, learning_rate: float, steps_per_epoch: int, precision: str,
              device: torch.device) -> "Training":
        """Seeded optimizer, scheduler and data order for a run of `cfg.epochs` epochs."""
        torch.manual_seed(cfg.seed)
        sharded = cfg.fsdp and distributed.world() > 1
        if sharded:  # one starting point for every process, then each keeps its shards (on the device)
            distributed.broadcast_parameters([p for p in model.parameters() if p.requires_grad])
            fsdp.shard(model, device, fsdp.Options.from_launch())
        elif getattr(model, "hf_quantizer", None) is None:  # 4-bit weights (QLoRA) stay where their loader put them
            model.to(device)
        if device.type == "cpu":  # PyTorch's CPU dropout draws a random number per element: 30% of a step (dropout.py)
            use_cpu_dropout(model)
            use_cpu_attention(model)  # and so does the attention's dropout inside SDPA
        # The fused kernel updates every tensor in one pass (CPU and CUDA, since torch 2.4) instead of ~10 passes
        # per tensor; Hugging Face's Trainer picks it by default too (`adamw_torch_fused`).
        optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=learning_rate,
                                      fused=device.type in ("cpu", "cuda"))
        total = steps_per_epoch * cfg.epochs
        scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total),
                                  num_training_steps=total)
        shuffle = torch.Generator().manual_seed(cfg.seed)
        training = cls(model, cfg, learning_rate, optimizer, scheduler, shuffle, precision, device, total)
        training.trainable = [p for p in model.parameters() if p.requires_grad]
        if distributed.world() > 1:
            if not sharded:
                distributed.broadcast_parameters(training.trainable)  # one starting point for every process
            torch.manual_seed(cfg.seed + distributed.rank())  # dropout: each process its own masks
        training.best_weights = trainable_copy(model)
        training.epoch_rng = shuffle.get_state()
        return training

    def step(self, batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor] | None],
             n_targets: Callable[[dict[str, torch.Tensor]], int] | None = None) -> float:
        """One optimisation step on `batch`, or on a list of micro-batches whose gradients add up (gradient
        accumulation); returns the step's loss.

        Micro-batch i's loss is a mean over its n_i targets (`n_targets`: examples, or answer tokens), so it is
        weighted n_i / Σn: the gradient is that of the mean over all the step's targets, as one large batch gives.
        Weighting by micro-batch instead would overweight the targets of a micro-batch with few answer tokens.

        In data-parallel training the micro-batches are this process's parts (None: an empty one), Σn runs over
        every process's, and the weighted gradients and losses are summed over the processes
        (`distributed.sum_gradients`): every process takes the same update, the one of the whole batch. Sharded
        (FSDP), the backward pass sums them itself, and an empty part is a `fsdp.Filler`, trained with weight 0."""
        micro = batch if isinstance(batch, list) else [batch]
        fillers = [isinstance(b, fsdp.Filler) for b in micro]
        micro = [None if b is None else to_device(b, self.device) for b in micro]
        parallel, sharded = distributed.world() > 1, fsdp.is_sharded(self.model)
        counts = [0 if b is None or filler else n_targets(b) if n_targets and (len(micro) > 1 or parallel) else 1
                  for b, filler in zip(micro, fillers)]
        total = distributed.total(sum(counts))
        value, problem = 0.0, None
        for b, n, filler in zip(micro, counts, fillers):
            if b is None:
                continue
            with autocast(self.precision, self.device):
                loss = self.model(**b).loss
            part = float(loss.detach())
            if not math.isfinite(part) and not filler:
                problem = problem or f"the training loss became {part}"
                if not sharded:
                    break
            if filler or problem:  # sharded: no contribution (the step is dropped), but the others' collectives
                loss, n = torch.nan_to_num(loss) * 0.0, total
            else:
                value += part * n / total
            (loss if n == total else loss * (n / total)).backward()
        if parallel:  # every process must take the same decision below: a problem on one is one on all
            summed = [] if sharded else self.trainable  # sharded: summed by the backward pass
            value, bad = distributed.sum_gradients(summed, [value, float(problem is not None)])
            if bad and problem is None:
                problem = "the training loss became non-finite in another process"
        if problem is None:
            # The norm is computed even without clipping (max_norm inf scales by exactly 1): a finite loss can
            # still give inf or NaN gradients (an overflow in the backward pass), which must not reach the weights.
            norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm or math.inf)
            norm = fsdp.full_value(norm)  # sharded gradients: the global norm, the same on every process
            if not math.isfinite(float(norm)):
                problem = f"the gradients became {float(norm)} (loss {value:.4g})"
        if problem is not None:
            self._nonfinite(problem)
            # The schedule still advances, so that it stays aligned with the step count (and with a resume);
            # torch warns when that happens before any optimizer step, which is here intended.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        else:
            self.optimizer.step()
            self.state.skipped_in_a_row = 0
            self.running, self.since_log = self.running + value, self.since_log + 1
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return value

    def _nonfinite(self, problem: str) -> None:
        """A step whose update cannot be taken: stop, or (`on_nonfinite: skip`) drop it unless too many in a row."""
        step = self.state.step + 1
        if self.cfg.on_nonfinite == "stop":
            raise TrainingError(f"{problem} at step {step}; lower train.learning_rate (now {self.learning_rate:g}), "
                                f"use train.precision=fp32, or set train.on_nonfinite=skip to drop such steps")
        self.state.skipped_steps += 1
        self.state.skipped_in_a_row += 1
        if self.state.skipped_in_a_row >= self.cfg.max_skipped_in_a_row:
            raise TrainingError(f"{problem} at step {step}, the {self.state.skipped_in_a_row}th step in a row "
                                f"skipped (train.max_skipped_in_a_row); the run is diverging: lower "
                                f"train.learning_rate (now {self.learning_rate:g}) or use train.precision=fp32")

    def seconds(self) -> float:
        """Training time so far, including that of the process(es) a resume continued."""
        return self.state.seconds_before_resume + time.time() - self.started

    def record_loss(self, epoch: float) -> dict[str, Any]:
        """The mean training loss since the last record, into the history; returns that row."""
        self.state.history.append({"step": self.state.step, "epoch": epoch, "train_loss": self.running / self.since_log,
                                   "learning_rate": self.scheduler.get_last_lr()[0], "time": time.time()})
        self.running, self.since_log = 0.0, 0
        return self.state.history[-1]

    @torch.no_grad()
    def keep_best(self) -> None:
        self.best_weights = trainable_copy(self.model)

    @torch.no_grad()
    def restore_best(self) -> None:
        params = dict(self.model.named_parameters())
        for name, value in self.best_weights.items():
            params[name].copy_(value)


@torch.no_grad()
def trainable_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
