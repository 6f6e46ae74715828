"""Checkpoints of a training run, so that an interrupted run (a crash, an OOM kill, Ctrl-C) continues exactly.

A checkpoint holds what the loop needs to go on as if it had never stopped: the trainable weights, the optimizer
and scheduler states, the RNG states (dropout and data order), the position in the epoch, the running loss, the
early-stopping state and the best weights so far. The newest lives beside the run's folder as `.NAME.checkpoint/`,
the ones before it as `.NAME.checkpoint.1/`, `.2/` … (`train.keep_checkpoints` complete ones in all). Each is
written under a temporary name and renamed when complete, so a kill while saving leaves the previous ones; a resume
takes the newest that reads whole, and says which file of a damaged one failed. All are removed once the run's
folder is written. Plain files only, as the rest of a run: tensors in safetensors, the rest in JSON; nothing is
unpickled on resume.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from safetensors.torch import load_file, save_file

from ..config import differences
from ..errors import TunelabError
from . import distributed, fsdp
from .state import Training, TrainState

WEIGHTS, BEST, STATE, TENSORS, CONFIG = ("weights.safetensors", "best.safetensors", "trainer_state.json",
                                         "state.safetensors", "config.yaml")


def checkpoint_folder(run_folder: Path) -> Path:
    return run_folder.with_name(f".{run_folder.name}.checkpoint")


def complete_checkpoints(run_folder: Path) -> list[Path]:
    """The checkpoints of `run_folder` on disk that were written whole, newest first (`.NAME.checkpoint`, `.1`, …;
    a kill between two renames of `save` may have left only the older ones)."""
    newest = checkpoint_folder(run_folder)
    numbered = sorted((int(p.name.rsplit(".", 1)[1]), p) for p in newest.parent.glob(f"{newest.name}.*")
                      if p.name.rsplit(".", 1)[1].isdigit())
    return [p for p in [newest, *(p for _, p in numbered)] if (p / STATE).is_file()]


class Checkpoint:
    """The checkpoint of the run that will be written to `run_folder`, trained with `config` (a resolved dict).

    `resolve` turns a saved config into the resolved form of this version of tunelab (options added since it was
    written, at their defaults: `settings.load_config`), so that only real changes stop a resume."""

    def __init__(self, run_folder: Path, config: dict[str, Any], every: int,
                 resolve: Callable[[dict[str, Any]], dict[str, Any]] | None = None, keep: int = 2):
        self.folder = checkpoint_folder(run_folder)
        self.config = config
        self.resolve = resolve
        self.every = every  # steps between mid-epoch checkpoints; 0: none at all
        self.keep = keep  # complete checkpoints kept: the newest and keep - 1 before it
        self.best_step: int | None = None  # the step whose best weights the saved checkpoint holds
        self.other_rngs: list[torch.Tensor] = []  # data-parallel: the RNG states of processes 1, 2, … to save
        self.whole: tuple[Any, ...] = ()  # the weights, best weights and optimizer state to save, whole (`_gather`)
        old = self.folder.with_name(self.folder.name + ".old")
        if old.is_dir() and not self.folder.exists():  # killed between the renames of an older tunelab's `save`
            old.rename(self.folder)

    def _older(self, i: int) -> Path:
        return self.folder.with_name(f"{self.folder.name}.{i}")

    def candidates(self) -> list[Path]:
        """The checkpoints on disk that were written whole, newest first."""
        return complete_checkpoints(self.folder.with_name(self.folder.name[1:-len(".checkpoint")]))

    def exists(self) -> bool:
        return bool(self.candidates())

    def summary(self) -> str:
        """For messages: 'step 120 of 642, saved 2026-11-29 19:40'."""
        for folder in self.candidates():
            try:
                state = json.loads((folder / STATE).read_text())
                saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(state["saved_at"]))
                return f"step {state['train']['step']} of {state['total_steps']}, saved {saved}"
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return "unreadable"

    def check_resumable(self) -> None:
        """The checkpoint exists and was written by this very config; anything else is a one-line error."""
        if not self.exists():
            raise TunelabError(f"nothing to resume: {self.folder} holds no checkpoint (a run writes one every "
                               f"train.checkpoint_every steps and at each epoch's end); drop --resume to start")
        saved = None
        for folder in self.candidates():
            try:
                saved = yaml.safe_load((folder / CONFIG).read_text())
                break
            except (OSError, yaml.YAMLError):
                continue
        if saved is None:
            raise TunelabError(f"cannot resume {self.folder}: no checkpoint's {CONFIG} can be read; delete "
                               f"{self.folder}* to start over")
        if self.resolve:
            try:
                saved = self.resolve(saved)
            except TunelabError:
                pass
        changed = differences(saved, self.config)
        if changed:
            raise TunelabError(f"cannot resume {self.folder}: it was trained with another config "
                               f"({'; '.join(changed[:3])}); restore those keys, or delete that folder to start over")

    def save(self, t: Training) -> None:
        """Write `t` (the whole of a run's training) as the newest checkpoint; the older ones move down a place
        only once it is complete, and the oldest beyond `keep` goes. A full disk ends with one clear line and
        leaves the checkpoints that were there."""
        # Data-parallel: every process's dropout RNG goes in, rank 0 alone writes. Sharded (FSDP): every process
        # takes part in gathering the whole tensors, so that the checkpoint is the same as without sharding.
        rngs = distributed.gather_to_main(torch.get_rng_state())
        whole = self._gather(t)
        if not distributed.is_main():
            self.best_step = t.state.best_step
            return
        self.other_rngs = rngs[1:]  # processes 1, 2, …
        self.whole = whole
        tmp = self.folder.with_name(self.folder.name + ".partial")
        try:
            self._write(t, tmp)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno != errno.ENOSPC:
                raise
            kept = f"the checkpoint at {self.summary()} is kept" if self.exists() else "no checkpoint was kept"
            raise TunelabError(f"the disk holding {self.folder.parent} is full: the checkpoint at step "
                               f"{t.state.step} could not be written ({kept}); free some space, then run the same "
                               f"command with --resume") from None
        finally:
            self.whole = ()  # under FSDP, copies of a whole model and its optimizer state
        # Rotate: newest → .1 → .2 …; a kill between two renames leaves every complete one under some name, and
        # `candidates` takes the newest of them.
        for i in range(max(self.keep - 1, 1), 0, -1):
            source = self.folder if i == 1 else self._older(i - 1)
            if source.exists():
                shutil.rmtree(self._older(i), ignore_errors=True)
                source.rename(self._older(i))
        tmp.rename(self.folder)
        for p in self.folder.parent.glob(f"{self.folder.name}.*"):  # beyond `keep` (with keep 1: the previous)
            number = p.name.rsplit(".", 1)[1]
            if number.isdigit() and int(number) >= self.keep:
                shutil.rmtree(p, ignore_errors=True)
        self.best_step = t.state.best_step

    def _link_best(self, t: Training) -> bool:
        """Whether the saved best weights are still the best: they change only at an evaluation, and between two
        the saved file is linked instead of rewritten (a whole model's copy for full fine-tuning)."""
        return distributed.agree(self.best_step == t.state.best_step and (self.folder / BEST).is_file())

    def _gather(self, t: Training) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, Any]:
        """The trainable weights, the best ones (None where the saved file still holds them or there are none) and
        the optimizer's state, whole and on the CPU (sharded ones gathered: every process calls this)."""
        link = t.state.best_value is None or self._link_best(t)
        keep = distributed.is_main()  # the others take part in gathering sharded tensors, and keep nothing
        if not keep and not fsdp.is_sharded(t.model):
            return {}, None, None
        weights = fsdp.gathered({n: p for n, p in t.model.named_parameters() if p.requires_grad}, keep)
        best = None if link else fsdp.gathered(t.best_weights, keep)
        return weights, best, fsdp.gathered(t.optimizer.state_dict(), keep)

    def _write(self, t: Training, tmp: Path) -> None:
        weights, best, optimizer = self.whole
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({n: p.contiguous() for n, p in weights.items()}, tmp / WEIGHTS)
        if t.state.best_value is not None:
            if best is None:  # unchanged since the last checkpoint (`_link_best`)
                try:
                    os.link(self.folder / BEST, tmp / BEST)
                except OSError:  # a file system without hard links
                    shutil.copy2(self.folder / BEST, tmp / BEST)
            else:
                save_file({n: w.contiguous() for n, w in best.items()}, tmp / BEST)
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state(), "rng.shuffle": t.shuffle.get_state(),
                                            "rng.epoch_start": t.epoch_rng}
        for r, rng in enumerate(self.other_rngs, 1):
            tensors[f"rng.torch.{r}"] = rng
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        state = {"optimizer": _split(optimizer, tensors, "optimizer"),
                 "scheduler": _split(t.scheduler.state_dict(), tensors, "scheduler"),
                 "train": asdict(t.state), "batches_done": t.batches_done, "running": [t.running, t.since_log],
                 "total_steps": t.total_steps, "seconds": t.seconds(), "saved_at": time.time()}
        save_file(tensors, tmp / TENSORS)
        (tmp / CONFIG).write_text(yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True))
        (tmp / STATE).write_text(json.dumps(state))  # last: its presence marks a checkpoint written whole

    def load(self, t: Training) -> list[str]:
        """Restore `t` from the newest checkpoint that reads whole: weights, optimizer, scheduler, RNG states,
        position and state. Returns what was passed over (a damaged checkpoint, the file that failed), for the log."""
        passed_over = []
        for folder in self.candidates():
            try:
                files = _read(folder)
            except _Damaged as e:
                passed_over.append(f"the checkpoint in {folder} is damaged ({e}); using the one before it")
                continue
            self._apply(t, *files)
            return passed_over
        raise TunelabError(f"no checkpoint of {self.folder.name[1:-len('.checkpoint')]} can be read: "
                           + "; ".join(passed_over) + f"; delete {self.folder}* to start over")

    def _apply(self, t: Training, weights, tensors, state, best) -> None:
        # Sharded (FSDP): each process cuts its shards from the whole tensors it read (`fsdp.shard_like`).
        params = dict(t.model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(fsdp.shard_like(value, params[name]))
        t.optimizer.load_state_dict(_sharded_like(_join(state["optimizer"], tensors), t.optimizer))
        t.scheduler.load_state_dict(_join(state["scheduler"], tensors))
        # Process r of a data-parallel run its own (a resume with more processes than saved: rank 0's).
        torch.set_rng_state(tensors.get(f"rng.torch.{distributed.rank()}", tensors["rng.torch"]))
        t.shuffle.set_state(tensors["rng.shuffle"])
        if torch.cuda.is_available():
            cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
        t.epoch_rng = tensors["rng.epoch_start"]
        if best is not None:
            t.best_weights = {n: fsdp.shard_like(w, params[n]) for n, w in best.items()}
        t.state = TrainState(**state["train"])
        t.state.resumed_at_step = t.state.step
        t.state.seconds_before_resume = state["seconds"]
        t.running, t.since_log = state["running"]
        t.batches_done = state["batches_done"]
        self.best_step = t.state.best_step

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        for p in self.folder.parent.glob(f"{self.folder.name}.*"):
            shutil.rmtree(p, ignore_errors=True)


class _Damaged(Exception):
    """A checkpoint file that cannot be read whole; the message names it."""


def _read(folder: Path) -> tuple[dict, dict, dict, dict | None]:
    """Every file of a checkpoint, read before anything is restored: a damaged one must not leave a half-restored
    training behind."""
    def safetensors(name: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(folder / name)
        except Exception as e:  # safetensors raises its own error type for a truncated or corrupt file
            raise _Damaged(f"{name}: {_reason(e)}") from None

    try:
        state = json.loads((folder / STATE).read_text())
        state["train"], state["seconds"], state["running"], state["batches_done"]  # noqa: B018  (present?)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _Damaged(f"{STATE}: {_reason(e)}") from None
    weights, tensors = safetensors(WEIGHTS), safetensors(TENSORS)
    missing = [k for k in ("rng.torch", "rng.shuffle", "rng.epoch_start") if k not in tensors]
    if missing:
        raise _Damaged(f"{TENSORS}: {', '.join(missing)} missing")
    best = safetensors(BEST) if (folder / BEST).is_file() else None
    return weights, tensors, state, best


def _sharded_like(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A saved optimizer state (whole tensors) with each weight's moments cut as that weight is (sharded, FSDP);
    unchanged otherwise. The state's keys are the weights' positions in the optimizer's groups."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {**saved, "state": {i: {k: fsdp.shard_like(v, params[int(i)]) if torch.is_tensor(v)
                                   and v.shape == params[int(i)].shape else v for k, v in s.items()}
                               for i, s in saved["state"].items()}}


def _reason(e: Exception) -> str:
    if isinstance(e, FileNotFoundError):
        return "missing"
    return str(e).splitlines()[0][:200] or type(e).__name__


def _split(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """A state dict as JSON, its tensors moved to `tensors` under their path. Dicts are written as [key, value]
    pairs, so that the integer keys of an optimizer's state come back as integers."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"tensor": path}
    if isinstance(obj, dict):
        return {"dict": [[k, _split(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"list": [_split(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    return {"value": obj}


def _join(node: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "dict" in node:
        return {k: _join(v, tensors) for k, v in node["dict"]}
    if "list" in node:
        return [_join(v, tensors) for v in node["list"]]
    return node["value"]
