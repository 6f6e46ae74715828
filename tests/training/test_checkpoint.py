"""Checkpoints and resume: an interrupted run, resumed, ends exactly where an uninterrupted one does."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab.api import train
from tunelab.errors import TunelabError

# 72 training examples in batches of 8: 9 steps an epoch, 27 in three epochs. Checkpoints every 4 steps, and at
# each epoch's end (9, 18): a crash before step 14 resumes from step 12, in the middle of the second epoch.
SETTINGS = {"train": {"epochs": 3, "checkpoint_every": 4, "log_every": 2}}


class Crash(Exception):
    """Stands for a kill: raised from inside the training loop."""


def _crash_at_step(monkeypatch, step: int) -> None:
    calls = {"n": 0}
    real = torch.optim.AdamW.step

    def step_or_crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise Crash(f"killed before step {step}")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.AdamW, "step", step_or_crash)


def _train_until_crash_at_step(monkeypatch, cfg: dict, step: int, **kwargs) -> None:
    """Trains `cfg` (api.train's keywords in `kwargs`) until it is killed before its `step`-th optimizer step."""
    with monkeypatch.context() as m:
        _crash_at_step(m, step)
        with pytest.raises(Crash):
            train(cfg, log=lambda _: None, **kwargs)


def _train_until_crash_after_training(monkeypatch, cfg: dict) -> None:
    """Trains `cfg` and is killed once the test split is predicted (in the diagnostics that follow)."""
    def crash(*args, **kwargs):
        raise Crash("killed after training")
    with monkeypatch.context() as m:
        m.setattr("tunelab.api._diagnostics", crash)
        with pytest.raises(Crash):
            train(cfg, log=lambda _: None)


def _config(tiny_config, method: str, name: str, **train_keys) -> dict:
    cfg = tiny_config(method)
    cfg["train"].update(SETTINGS["train"], **train_keys)
    cfg["name"] = name
    return cfg


def _weights(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((run / "model").glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(f).items()})
    assert out, f"no weights saved in {run}"
    return out


def _history(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


@pytest.mark.parametrize("method", ["lora", "full", "adapter"])
def test_a_run_resumed_mid_epoch_ends_exactly_as_an_uninterrupted_one(tiny_config, monkeypatch, method):
    straight = train(_config(tiny_config, method, "straight"), log=lambda _: None)

    cfg = _config(tiny_config, method, "resumed")
    _train_until_crash_at_step(monkeypatch, cfg, 14)
    runs = Path(cfg["output"])
    assert not (runs / "resumed").exists()
    assert (runs / ".resumed.checkpoint" / "trainer_state.json").is_file()
    logs: list[str] = []
    resumed = train(cfg, resume=True, log=logs.append)

    assert any("resumed from the checkpoint at step 12 of 27 (epoch 2)" in line for line in logs), logs
    assert resumed["resumed_at_step"] == 12 and straight["resumed_at_step"] is None
    a, b = _weights(runs / "straight"), _weights(runs / "resumed")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after the resume"
    assert _history(runs / "straight") == _history(runs / "resumed")
    assert straight["test"] == resumed["test"] and straight["validation"] == resumed["validation"]
    assert not (runs / ".resumed.checkpoint").exists(), "the checkpoint outlived the finished run"


def test_a_resumed_runs_fit_time_includes_the_training_before_the_interruption(tiny_config, monkeypatch):
    """The comparison's time axis and the budget check read `fit_seconds`: a resume must not reset it to zero."""
    cfg = _config(tiny_config, "lora", "timed")
    _train_until_crash_at_step(monkeypatch, cfg, 14)
    state_file = Path(cfg["output"]) / ".timed.checkpoint" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["seconds"] = 1000.0  # as if the first 12 steps had taken 1000 s
    state_file.write_text(json.dumps(state))
    resumed = train(cfg, resume=True, log=lambda _: None)
    assert 1000.0 <= resumed["time"]["fit_seconds"] < 1000.0 + 300


def test_a_crash_after_training_resumes_without_training_again(tiny_config, monkeypatch):
    """Killed while predicting the test split (minutes of generation for a decoder): no step is repeated."""
    straight = train(_config(tiny_config, "lora", "straight"), log=lambda _: None)
    cfg = _config(tiny_config, "lora", "late")
    _train_until_crash_after_training(monkeypatch, cfg)
    with monkeypatch.context() as m:
        _crash_at_step(m, 1)  # any training step would crash now
        logs: list[str] = []
        resumed = train(cfg, resume=True, log=logs.append)
    assert "resumed from the checkpoint at step 27 of 27 (training had finished)" in logs
    assert resumed["resumed_at_step"] == 27
    assert resumed["test"] == straight["test"]
    runs = Path(cfg["output"])
    a, b = _weights(runs / "straight"), _weights(runs / "late")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_an_early_stopped_run_resumes_as_stopped(tiny_config, monkeypatch):
    keys = {"epochs": 6, "learning_rate": 1e-9, "early_stopping": {"patience": 2, "metric": "loss"}}
    straight = train(_config(tiny_config, "full", "straight", **keys), log=lambda _: None)
    assert straight["stopped_early"]
    cfg = _config(tiny_config, "full", "stopped", **keys)
    _train_until_crash_after_training(monkeypatch, cfg)
    resumed = train(cfg, resume=True, log=lambda _: None)
    assert resumed["stopped_early"] and resumed["epochs_run"] == straight["epochs_run"]
    assert resumed["best_epoch"] == straight["best_epoch"]
    assert resumed["test"] == straight["test"]


def test_checkpoints_are_plain_files(tiny_config, monkeypatch):
    """Nothing is unpickled on resume: tensors in safetensors, the rest in JSON and YAML."""
    cfg = _config(tiny_config, "lora", "plain")
    _train_until_crash_at_step(monkeypatch, cfg, 6)
    folder = Path(cfg["output"]) / ".plain.checkpoint"
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".safetensors", ".safetensors", ".yaml"]
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["train"]["step"] == 4 and state["batches_done"] == 4 and state["total_steps"] == 27
    # Before the first evaluation there are no best weights to keep; after it, they are saved too.
    _train_until_crash_at_step(monkeypatch, cfg, 11, resume=True)
    assert (folder / "best.safetensors").is_file()
    assert not list(Path(cfg["output"]).glob(".plain.checkpoint.*")), "a temporary checkpoint folder was left"


def test_starting_over_on_a_checkpoint_is_refused(tiny_config, monkeypatch):
    cfg = _config(tiny_config, "lora", "kept")
    _train_until_crash_at_step(monkeypatch, cfg, 6)
    with pytest.raises(TunelabError, match=r"\.kept\.checkpoint holds an interrupted run of this name \(step 4 of 27, "
                                           r"saved .*\); pass --resume to continue it, or delete that folder"):
        train(cfg, log=lambda _: None)
    changed = {**cfg, "train": {**cfg["train"], "learning_rate": 0.123}}
    with pytest.raises(TunelabError, match=r"cannot resume .*\.kept\.checkpoint: it was trained with another config "
                                           r"\(train\.learning_rate None → 0\.123\); restore those keys"):
        train(changed, resume=True, log=lambda _: None)
    # How often checkpoints are written changes nothing in the result: not a reason to refuse.
    again = {**cfg, "train": {**cfg["train"], "checkpoint_every": 5}}
    assert train(again, resume=True, log=lambda _: None)["resumed_at_step"] == 4


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_config):
    with pytest.raises(TunelabError, match=r"nothing to resume: .*\.fresh\.checkpoint holds no checkpoint"):
        train(_config(tiny_config, "lora", "fresh"), resume=True, log=lambda _: None)


def test_checkpoint_every_0_writes_none(tiny_config, monkeypatch):
    cfg = _config(tiny_config, "lora", "none", checkpoint_every=0)
    _train_until_crash_at_step(monkeypatch, cfg, 14)
    assert not list(Path(cfg["output"]).iterdir())
