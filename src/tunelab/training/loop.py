"""The one training loop, for every trained method and task.

Our own loop rather than the Hugging Face `Trainer`: it is ~150 lines that read top to bottom,
it pads each batch to its own length, and every piece of state that an exact resume needs
(optimizer, scheduler, RNG, position, early-stopping state) is in one object, `Training`
(`state.py`), which goes into the checkpoint (`checkpoint.py`). `bench/speed.py` measures it against
`Trainer` on the same model.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed, fsdp
from .batches import Batches
from .checkpoint import Checkpoint
from .interrupt import deferred_stop, stop_for
from .first_token import first_position_only
from .precision import autocast, frozen_weights_cast, to_device
from .state import Training, TrainState


class Hooks(Protocol):
    """What an observer of training hears (experiment tracking: `tracking.Tracking`); nothing it does changes
    what is trained."""

    def started(self, state: TrainState) -> None:
        """Training starts, or restarts at a resumed `state` whose history holds what came before."""

    def recorded(self, row: dict[str, Any]) -> None:
        """A row just added to `state.history`: a training-loss record or an epoch's validation metrics."""


@torch.no_grad()
def predict_scores(model: nn.Module, batches: Batches, batch_size: int, precision: str,
                   device: torch.device, keep_outputs: bool = True) -> tuple[np.ndarray | None, float | None]:
    """Model outputs (the task's `logits`) for every feature in order, and the mean loss where targets exist.

    The loss is averaged over targets: features, or answer tokens where the labels are token-level
    (then it is the mean token loss that perplexity needs). `keep_outputs=False` returns the loss only,
    for models whose logits (sequence × vocabulary) are too large to keep.
    """
    model.eval()
    with first_position_only(model):  # a BERT-style classifier's last layer: only the position its head reads
        return _predict_scores(model, batches, batch_size, precision, device, keep_outputs)


def _predict_scores(model: nn.Module, batches: Batches, batch_size: int, precision: str,
                    device: torch.device, keep_outputs: bool) -> tuple[np.ndarray | None, float | None]:
    outputs, losses, counts = [], [], []
    # Longest first: each batch holds inputs of like length, so it pads little (the order of the outputs is
    # restored below), and the largest batch comes first, where a memory error would show at once.
    order = sorted(range(len(batches)), key=lambda i: -len(batches.features[i]["input_ids"]))
    # Data-parallel: each process scores its rows of every batch, collated with the whole batch so that they are
    # padded as one process pads them (a span loss sees the padding); the rows are gathered back below.
    mine: list[int] = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = distributed.part(range(len(idx)))
        if not len(rows):
            if fsdp.is_sharded(model):  # the others' forward gathers the weights with this process: take part
                model(**to_device(batches.rows_of(batches.batch(idx[:1]), range(1)), device))
            continue
        batch = batches.batch(idx)
        if distributed.world() > 1:
            batch = batches.rows_of(batch, rows)
        mine += idx[rows.start:rows.stop]
        batch = to_device(batch, device)
        with autocast(precision, device):
            out = model(**batch)
        if keep_outputs:
            outputs.append(batches.task.logits(out).float().cpu())
        if getattr(out, "loss", None) is not None:  # the model was given targets
            n = batches.task.n_targets(batch)
            losses.append(float(out.loss) * n)
            counts.append(n)
    n_targets = distributed.total(sum(counts))
    loss = distributed.total(sum(losses)) / n_targets if n_targets else None
    if not keep_outputs:
        return None, loss
    if distributed.world() > 1:  # every process's rows, each feature once
        pieces = distributed.gather([(mine, _concat(outputs))] if outputs else [])
        mine = [i for ids, _ in pieces for i in ids]
        outputs = [torch.from_numpy(a) for _, a in pieces]
    if not outputs:
        return None, loss
    return _concat(outputs)[np.argsort(mine)], loss  # back in feature order


def _concat(chunks: list[torch.Tensor]) -> np.ndarray:
    """One array from per-batch outputs; per-token outputs (rows × tokens × …) are zero-padded to the widest
    batch, since each batch is padded to its own longest input."""
    if chunks and chunks[0].ndim > 2:
        width = max(c.shape[1] for c in chunks)
        chunks = [torch.nn.functional.pad(c, (0, 0) * (c.ndim - 2) + (0, width - c.shape[1])) for c in chunks]
    return torch.cat(chunks).numpy()


def train(training: Training, batches: Batches, evaluate: Callable[[], dict[str, float]], metric: str,
          better: Callable[[str, float, float | None], bool], log: Callable[[str], None] = print,
          checkpoint: Checkpoint | None = None, resume: bool = False,
          on_evaluation: Callable[[float, float], None] | None = None, first_epoch_reports: int = 1,
          hooks: Hooks | None = None) -> TrainState:
    """Train `training.model` in place, one `Training.step` per batch; `evaluate()` returns validation metrics
    (with `loss`) after each epoch, and early stopping watches their `metric`.

    `on_evaluation(epochs_done, value)` hears each epoch's validation metric; a hyper-parameter search uses it
    to stop a hopeless trial (it raises to end training). With `first_epoch_reports` n > 1 it also hears n - 1
    evaluations at even fractions of the first epoch (`epochs_done` 1/n, 2/n, ...), where most hopeless trials
    show themselves; those only report: they do not count for early stopping or the best weights, and, as an
    evaluation draws no random numbers, the run trains exactly as without them.

    At the end the weights of the best evaluation are restored. With a `checkpoint`, the loop saves one every
    `cfg.checkpoint_every` steps and after each evaluation; `resume` starts from the saved one. `hooks` hear the
    start and every history row (`Hooks`).
    """
    t, cfg, state = training, training.cfg, training.state
    accumulate = cfg.gradient_accumulation_steps
    steps_per_epoch = batches.n_batches(cfg.batch_size * accumulate)
    if resume:
        for note in checkpoint.load(t):
            log(note)
        state = t.state
        finished = state.stopped_early or state.epoch == cfg.epochs
        log(f"resumed from the checkpoint at step {state.step} of {t.total_steps} "
            + ("(training had finished)" if finished else f"(epoch {state.epoch + 1})"))
    t.started = time.time()
    if hooks:
        hooks.started(state)

    def record(row: dict[str, Any]) -> None:
        if hooks:
            hooks.recorded(row)

    # Ctrl-C / SIGTERM: finish the step, save there, then stop. Frozen weights cast to bf16 once, not every step. A
    # BERT-style classifier's last layer computes only the position its head reads (first_token.py).
    with (deferred_stop() as asked, frozen_weights_cast(t.model, t.precision, t.device),
          first_position_only(t.model)):

        def stop_if_asked(saved: bool) -> None:
            signum = distributed.largest(asked() or 0)  # stop on every process, or on none
            if not signum:
                return
            if checkpoint and checkpoint.every and not saved:
                checkpoint.save(t)
            raise stop_for(signum)

        for epoch in range(state.epoch, 0 if state.stopped_early else cfg.epochs):
            t.model.train()
            skip = t.batches_done
            if skip:  # mid-epoch: the same order as before the interruption, less the batches already trained
                t.shuffle.set_state(t.epoch_rng)
            else:
                t.epoch_rng = t.shuffle.get_state()
            # A live bar on a terminal only: in logs and CI it would be thousands of carriage returns.
            bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       unit="step", disable=not sys.stderr.isatty())
            # Without the bar (a log file, nohup, CI), a line at each fifth of an epoch says the run is alive.
            every, started = (max(1, steps_per_epoch // 5) if bar.disable else 0), time.time()
            reports = {steps_per_epoch * k // first_epoch_reports: k / first_epoch_reports
                       for k in range(1, first_epoch_reports)} if epoch == 0 and on_evaluation else {}
            for micro in batches.steps(cfg.batch_size, accumulate, t.shuffle, cfg.group_by_length, skip=skip,
                                       rank=distributed.rank(), world=distributed.world(),
                                       fill=fsdp.is_sharded(t.model)):
                loss = t.step(micro, batches.task.n_targets)
                t.batches_done += 1
                done = t.batches_done
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if every and done % every == 0 and done < steps_per_epoch:
                    log(f"epoch {epoch + 1}/{cfg.epochs}: step {done}/{steps_per_epoch}, loss {loss:.4f}, "
                        f"{(time.time() - started) / (done - skip):.2f} s/step")
                if state.step % cfg.log_every == 0 and t.since_log:  # (every step since the last record skipped: none)
                    record(t.record_loss(state.step / steps_per_epoch))
                saved = bool(checkpoint and checkpoint.every and state.step % checkpoint.every == 0
                             and done < steps_per_epoch)
                if saved:
                    checkpoint.save(t)
                stop_if_asked(saved)
                if done in reports and done < steps_per_epoch:
                    on_evaluation(reports[done], evaluate()[metric])
                    t.model.train()  # evaluate() left the model in eval mode
            bar.close()
            t.batches_done = 0
            state.epoch = epoch + 1
            if t.since_log:  # the epoch's last steps (all of a run shorter than log_every): its curve must not be empty
                record(t.record_loss(state.epoch))

            scores = distributed.agree(evaluate())  # the same decisions below on every process
            value = scores[metric]
            state.history.append({"step": state.step, "epoch": state.epoch, "time": time.time(),
                                  **{f"validation_{k}": v for k, v in scores.items()}})
            record(state.history[-1])
            improved = better(metric, value, state.best_value)
            log(f"epoch {state.epoch}/{cfg.epochs}: validation loss {scores['loss']:.4f}, {metric} {value:.4f}"
                + ("  (best so far)" if improved else ""))
            if improved:
                state.best_value, state.best_epoch, state.evals_without_improvement = value, state.epoch, 0
                state.best_step = state.step
                t.keep_best()
            else:
                state.evals_without_improvement += 1
                if cfg.early_stopping.patience and state.evals_without_improvement >= cfg.early_stopping.patience:
                    state.stopped_early = True
                    log(f"early stopping: no {metric} improvement for {cfg.early_stopping.patience} evaluation(s)")
            if checkpoint and checkpoint.every:  # after the evaluation: a crash while testing resumes with no training
                checkpoint.save(t)
            stop_if_asked(saved=True)
            if on_evaluation:
                on_evaluation(float(state.epoch), value)
            if state.stopped_early:
                break

    t.restore_best()
    if state.best_epoch != state.epoch:
        log(f"restored the weights of epoch {state.best_epoch} (best validation {metric} {state.best_value:.4f})")
    return state
