"""Checkpoints of a training run, so that an interrupted run (a crash, an OOM kill, Ctrl-C) continues exactly.

A checkpoint holds what the loop needs to go on as if it had never stopped: the trainable weights, the optimizer
and scheduler states, the RNG states (dropout and data order), the position in the epoch, the running loss, the
early-stopping state and the best weights so far. It lives beside the run's folder as `.NAME.checkpoint/`, is
written under a temporary name and renamed when complete (a kill while saving leaves the previous one), and is
removed once the run's folder is written. Plain files only, as the rest of a run: tensors in safetensors, the
rest in JSON; nothing is unpickled on resume.
"""
from __future__ import annotations

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
from .state import Training, TrainState

WEIGHTS, BEST, STATE, TENSORS, CONFIG = ("weights.safetensors", "best.safetensors", "trainer_state.json",
                                         "state.safetensors", "config.yaml")


def checkpoint_folder(run_folder: Path) -> Path:
    return run_folder.with_name(f".{run_folder.name}.checkpoint")


class Checkpoint:
    """The checkpoint of the run that will be written to `run_folder`, trained with `config` (a resolved dict).

    `resolve` turns a saved config into the resolved form of this version of tunelab (options added since it was
    written, at their defaults: `settings.load_config`), so that only real changes stop a resume."""

    def __init__(self, run_folder: Path, config: dict[str, Any], every: int,
                 resolve: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
        self.folder = checkpoint_folder(run_folder)
        self.config = config
        self.resolve = resolve
        self.every = every  # steps between mid-epoch checkpoints; 0: none at all
        self.best_step: int | None = None  # the step whose best weights the saved checkpoint holds
        old = self.folder.with_name(self.folder.name + ".old")
        if old.is_dir() and not self.folder.exists():  # killed between the two renames of `save`
            old.rename(self.folder)

    def exists(self) -> bool:
        return (self.folder / STATE).is_file()

    def summary(self) -> str:
        """For messages: 'step 120 of 642, saved 2026-11-29 19:40'."""
        state = json.loads((self.folder / STATE).read_text())
        saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(state["saved_at"]))
        return f"step {state['train']['step']} of {state['total_steps']}, saved {saved}"

    def check_resumable(self) -> None:
        """The checkpoint exists and was written by this very config; anything else is a one-line error."""
        if not self.exists():
            raise TunelabError(f"nothing to resume: {self.folder} holds no checkpoint (a run writes one every "
                               f"train.checkpoint_every steps and at each epoch's end); drop --resume to start")
        saved = yaml.safe_load((self.folder / CONFIG).read_text())
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
        """Write `t` (the whole of a run's training) as the checkpoint, replacing the previous one only once the
        new one is complete."""
        tmp = self.folder.with_name(self.folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({n: p.detach().cpu().contiguous() for n, p in t.model.named_parameters() if p.requires_grad},
                  tmp / WEIGHTS)
        if t.state.best_value is not None:
            # The best weights change only at an evaluation: between two, link the saved file instead of rewriting
            # it (a whole model's copy for full fine-tuning).
            if self.best_step == t.state.best_step and (self.folder / BEST).is_file():
                try:
                    os.link(self.folder / BEST, tmp / BEST)
                except OSError:  # a file system without hard links
                    shutil.copy2(self.folder / BEST, tmp / BEST)
            else:
                save_file({n: w.cpu().contiguous() for n, w in t.best_weights.items()}, tmp / BEST)
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state(), "rng.shuffle": t.shuffle.get_state(),
                                            "rng.epoch_start": t.epoch_rng}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        state = {"optimizer": _split(t.optimizer.state_dict(), tensors, "optimizer"),
                 "scheduler": _split(t.scheduler.state_dict(), tensors, "scheduler"),
                 "train": asdict(t.state), "batches_done": t.batches_done, "running": [t.running, t.since_log],
                 "total_steps": t.total_steps, "seconds": t.seconds(), "saved_at": time.time()}
        save_file(tensors, tmp / TENSORS)
        (tmp / STATE).write_text(json.dumps(state))
        (tmp / CONFIG).write_text(yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True))
        # Swap in the new checkpoint; a kill between the two renames leaves `.old`, which `__init__` puts back.
        old = self.folder.with_name(self.folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            self.folder.rename(old)
        tmp.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)
        self.best_step = t.state.best_step

    def load(self, t: Training) -> None:
        """Restore `t` as it was saved: weights, optimizer, scheduler, RNG states, position and state."""
        weights = load_file(self.folder / WEIGHTS)
        params = dict(t.model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        tensors = load_file(self.folder / TENSORS)
        state = json.loads((self.folder / STATE).read_text())
        t.optimizer.load_state_dict(_join(state["optimizer"], tensors))
        t.scheduler.load_state_dict(_join(state["scheduler"], tensors))
        torch.set_rng_state(tensors["rng.torch"])
        t.shuffle.set_state(tensors["rng.shuffle"])
        if torch.cuda.is_available():
            cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
        t.epoch_rng = tensors["rng.epoch_start"]
        if (self.folder / BEST).is_file():
            t.best_weights = {n: w.to(t.device) for n, w in load_file(self.folder / BEST).items()}
        t.state = TrainState(**state["train"])
        t.state.resumed_at_step = t.state.step
        t.state.seconds_before_resume = state["seconds"]
        t.running, t.since_log = state["running"]
        t.batches_done = state["batches_done"]
        self.best_step = t.state.best_step

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


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
