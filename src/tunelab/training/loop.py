"""The one training loop, for every trained method and task.

Our own loop rather than the Hugging Face `Trainer`: it is ~150 lines that read top to bottom,
it pads each batch to its own length, and every piece of state that an exact resume needs
(optimizer, scheduler, RNG, position, early-stopping state) is in plain sight in `TrainState`
and goes into the checkpoint (`checkpoint.py`). `bench/train_speed.py` measures it against
`Trainer` on the same model.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..config import TrainConfig
from ..errors import TrainingError
from .batches import Batches
from .checkpoint import Checkpoint
from .precision import autocast


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


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: decaying biases and LayerNorm gains only hurts."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def predict_scores(model: nn.Module, batches: Batches, batch_size: int, precision: str,
                   device: torch.device, keep_outputs: bool = True) -> tuple[np.ndarray | None, float | None]:
    """Model outputs (the task's `logits`) for every feature in order, and the mean loss where targets exist.

    The loss is averaged over targets: features, or answer tokens where the labels are token-level
    (then it is the mean token loss that perplexity needs). `keep_outputs=False` returns the loss only,
    for models whose logits (sequence × vocabulary) are too large to keep.
    """
    model.eval()
    outputs, losses, counts = [], [], []
    for batch in batches.iterate(batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(precision, device):
            out = model(**batch)
        if keep_outputs:
            outputs.append(batches.task.logits(out).float().cpu())
        if getattr(out, "loss", None) is not None:  # the model was given targets
            n = _n_targets(batch)
            losses.append(float(out.loss) * n)
            counts.append(n)
    loss = sum(losses) / sum(counts) if counts else None
    return (_concat(outputs) if keep_outputs else None), loss


def _concat(chunks: list[torch.Tensor]) -> np.ndarray:
    """One array from per-batch outputs; per-token outputs (rows × tokens × …) are zero-padded to the widest
    batch, since each batch is padded to its own longest input."""
    if chunks and chunks[0].ndim > 2:
        width = max(c.shape[1] for c in chunks)
        chunks = [torch.nn.functional.pad(c, (0, 0) * (c.ndim - 2) + (0, width - c.shape[1])) for c in chunks]
    return torch.cat(chunks).numpy()


def _n_targets(batch: dict[str, torch.Tensor]) -> int:
    labels = batch.get("labels")
    if labels is None:  # span targets (start and end positions): one per feature
        return len(batch["input_ids"])
    if labels.ndim == 1:
        return len(labels)
    # Token labels: a causal LM predicts token t+1 from position t, so the first label is never a target.
    return int((labels[:, 1:] != -100).sum())


def train(model: nn.Module, train_batches: Batches, evaluate: Callable[[], dict[str, float]], cfg: TrainConfig,
          learning_rate: float, metric: str, better: Callable[[str, float, float | None], bool],
          precision: str, device: torch.device, log: Callable[[str], None] = print,
          checkpoint: Checkpoint | None = None, resume: bool = False,
          on_evaluation: Callable[[float, float], None] | None = None,
          first_epoch_reports: int = 1) -> TrainState:
    """Train `model` in place; `evaluate()` returns validation metrics (with `loss`) after each epoch.

    `on_evaluation(epochs_done, value)` hears each epoch's validation metric; a hyper-parameter search uses it
    to stop a hopeless trial (it raises to end training). With `first_epoch_reports` n > 1 it also hears n - 1
    evaluations at even fractions of the first epoch (`epochs_done` 1/n, 2/n, ...), where most hopeless trials
    show themselves; those only report: they do not count for early stopping or the best weights, and, as an
    evaluation draws no random numbers, the run trains exactly as without them.

    At the end the weights of the best evaluation are restored. With a `checkpoint`, the loop saves one every
    `cfg.checkpoint_every` steps and after each evaluation; `resume` starts from the saved one.
    """
    torch.manual_seed(cfg.seed)
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=learning_rate)
    steps_per_epoch = train_batches.n_batches(cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    shuffle = torch.Generator().manual_seed(cfg.seed)  # its own generator: data order independent of dropout
    state = TrainState()
    best_weights = _copy_trainable(model)
    running, since_log = 0.0, 0  # mean training loss since the last history record
    skip, epoch_rng = 0, shuffle.get_state()  # batches of the epoch already trained; the order's seed state
    loop_started = time.time()

    def save_checkpoint(batches_done: int) -> None:
        checkpoint.save(model, optimizer, scheduler, shuffle, epoch_rng, batches_done, (running, since_log),
                        asdict(state), best_weights, total_steps,
                        state.seconds_before_resume + time.time() - loop_started)

    if resume:
        saved = checkpoint.load(model, optimizer, scheduler, shuffle)
        state = TrainState(**saved["train"])
        state.resumed_at_step = state.step
        state.seconds_before_resume = saved["seconds"]
        if saved["best_weights"] is not None:
            best_weights = {n: t.to(device) for n, t in saved["best_weights"].items()}
        running, since_log = saved["running"]
        skip, epoch_rng = saved["batches_done"], saved["epoch_rng"]
        finished = state.stopped_early or state.epoch == cfg.epochs
        log(f"resumed from the checkpoint at step {state.step} of {total_steps} "
            + ("(training had finished)" if finished else f"(epoch {state.epoch + 1})"))

    for epoch in range(state.epoch, 0 if state.stopped_early else cfg.epochs):
        model.train()
        if skip:  # mid-epoch: the same order as before the interruption, less the batches already trained
            shuffle.set_state(epoch_rng)
        else:
            epoch_rng = shuffle.get_state()
        # A live bar on a terminal only: in logs and CI it would be thousands of carriage returns.
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   unit="step", disable=not sys.stderr.isatty())
        # Without the bar (a log file, nohup, CI), a line at each fifth of an epoch says the run is alive.
        every, started, done = (max(1, steps_per_epoch // 5) if bar.disable else 0), time.time(), skip
        reports = {steps_per_epoch * k // first_epoch_reports: k / first_epoch_reports
                   for k in range(1, first_epoch_reports)} if epoch == 0 and on_evaluation else {}
        for batch in train_batches.iterate(cfg.batch_size, shuffle, cfg.group_by_length, skip=skip):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(precision, device):
                loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise TrainingError(f"the training loss became {float(loss.detach())} at step {state.step + 1}; lower "
                                    f"train.learning_rate (now {learning_rate:g}) or use train.precision=fp32")
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            loss_value = float(loss.detach())
            running, since_log = running + loss_value, since_log + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            done += 1
            if every and done % every == 0 and done < steps_per_epoch:
                log(f"epoch {epoch + 1}/{cfg.epochs}: step {done}/{steps_per_epoch}, loss {loss_value:.4f}, "
                    f"{(time.time() - started) / (done - skip):.2f} s/step")
            if state.step % cfg.log_every == 0:
                state.history.append({"step": state.step, "epoch": state.step / steps_per_epoch,
                                      "train_loss": running / since_log, "learning_rate": scheduler.get_last_lr()[0],
                                      "time": time.time()})
                running, since_log = 0.0, 0
            if checkpoint and checkpoint.every and state.step % checkpoint.every == 0 and done < steps_per_epoch:
                save_checkpoint(done)
            if done in reports and done < steps_per_epoch:
                on_evaluation(reports[done], evaluate()[metric])
                model.train()  # evaluate() left the model in eval mode
        bar.close()
        skip = 0
        state.epoch = epoch + 1
        if since_log:  # the epoch's last steps (all of a run shorter than log_every): its curve must not be empty
            state.history.append({"step": state.step, "epoch": state.epoch, "train_loss": running / since_log,
                                  "learning_rate": scheduler.get_last_lr()[0], "time": time.time()})
            running, since_log = 0.0, 0

        scores = evaluate()
        value = scores[metric]
        state.history.append({"step": state.step, "epoch": state.epoch, "time": time.time(),
                              **{f"validation_{k}": v for k, v in scores.items()}})
        improved = better(metric, value, state.best_value)
        log(f"epoch {state.epoch}/{cfg.epochs}: validation loss {scores['loss']:.4f}, {metric} {value:.4f}"
            + ("  (best so far)" if improved else ""))
        if improved:
            state.best_value, state.best_epoch, state.evals_without_improvement = value, state.epoch, 0
            state.best_step = state.step
            best_weights = _copy_trainable(model)
        else:
            state.evals_without_improvement += 1
            if cfg.early_stopping.patience and state.evals_without_improvement >= cfg.early_stopping.patience:
                state.stopped_early = True
                log(f"early stopping: no {metric} improvement for {cfg.early_stopping.patience} evaluation(s)")
        if checkpoint and checkpoint.every:  # after the evaluation: a crash while testing resumes with no training
            save_checkpoint(0)
        if on_evaluation:
            on_evaluation(float(state.epoch), value)
        if state.stopped_early:
            break

    _restore(model, best_weights)
    if state.best_epoch != state.epoch:
        log(f"restored the weights of epoch {state.best_epoch} (best validation {metric} {state.best_value:.4f})")
    return state


@torch.no_grad()
def _copy_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _restore(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in weights.items():
        params[name].copy_(value)

