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
    left = sorted(p.name for p in Path(cfg["output"]).glob(".plain.checkpoint.*"))
    assert left == [".plain.checkpoint.1"], "a temporary checkpoint folder was left"  # .1: the one before, kept
    older = Path(cfg["output"]) / ".plain.checkpoint.1"
    assert {p.suffix for p in older.iterdir()} <= {".json", ".safetensors", ".yaml"}


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


# --- damaged checkpoints, the last K kept, a full disk --------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated weights", "missing optimizer state"])
def test_a_damaged_newest_checkpoint_is_named_and_the_one_before_resumes_exactly(tiny_config, monkeypatch, damage):
    straight = train(_config(tiny_config, "full", "straight"), log=lambda _: None)
    cfg = _config(tiny_config, "full", "damaged")
    _train_until_crash_at_step(monkeypatch, cfg, 14)  # checkpoints at steps 4, 8, 9 and 12: 12 and 9 are kept
    runs = Path(cfg["output"])
    newest, before = runs / ".damaged.checkpoint", runs / ".damaged.checkpoint.1"
    assert json.loads((before / "trainer_state.json").read_text())["train"]["step"] == 9
    assert not (runs / ".damaged.checkpoint.2").exists()
    if damage == "truncated weights":
        weights = newest / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        named = "weights.safetensors: "
    else:
        (newest / "state.safetensors").unlink()
        named = "state.safetensors: missing"
    logs: list[str] = []
    resumed = train(cfg, resume=True, log=logs.append)
    assert any(f"the checkpoint in {newest} is damaged ({named}" in line and "using the one before it" in line
               for line in logs), logs
    assert "resumed from the checkpoint at step 9 of 27 (epoch 2)" in logs
    a, b = _weights(runs / "straight"), _weights(runs / "damaged")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert resumed["test"] == straight["test"]
    assert not list(runs.glob(".damaged.checkpoint*")), "checkpoints outlived the finished run"


def test_when_every_checkpoint_is_damaged_the_error_names_each(tiny_config, monkeypatch):
    cfg = _config(tiny_config, "lora", "ruined")
    _train_until_crash_at_step(monkeypatch, cfg, 14)
    runs = Path(cfg["output"])
    for folder in (runs / ".ruined.checkpoint", runs / ".ruined.checkpoint.1"):
        (folder / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(TunelabError, match=r"no checkpoint of ruined can be read: the checkpoint in .*\.ruined\."
                                           r"checkpoint is damaged \(weights\.safetensors: .*\.ruined\.checkpoint\.1 "
                                           r"is damaged .*delete .*\.ruined\.checkpoint\* to start over"):
        train(cfg, resume=True, log=lambda _: None)


def test_keep_checkpoints_sets_how_many_complete_ones_stay(tiny_config, monkeypatch):
    cfg = _config(tiny_config, "lora", "three", keep_checkpoints=3)
    _train_until_crash_at_step(monkeypatch, cfg, 14)
    runs = Path(cfg["output"])
    steps = [json.loads((runs / name / "trainer_state.json").read_text())["train"]["step"]
             for name in (".three.checkpoint", ".three.checkpoint.1", ".three.checkpoint.2")]
    assert steps == [12, 9, 8] and not (runs / ".three.checkpoint.3").exists()
    cfg["train"]["keep_checkpoints"] = 1  # does not change the results: the resume is allowed, and prunes
    _train_until_crash_at_step(monkeypatch, cfg, 6, resume=True)  # one more checkpoint, at step 16
    assert sorted(p.name for p in runs.iterdir() if p.name.startswith(".three")) == [".three.checkpoint"]


def test_a_full_disk_while_saving_keeps_the_last_checkpoint_and_ends_with_one_line(tiny_config, monkeypatch):
    import errno

    from tunelab.training.checkpoint import Checkpoint
    real, calls = Checkpoint._write, {"n": 0}

    def write_until_full(self, t, tmp):
        calls["n"] += 1
        if calls["n"] == 2:  # the second save (step 8) runs out of space half-way
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / "weights.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, t, tmp)

    cfg = _config(tiny_config, "lora", "full-disk")
    monkeypatch.setattr(Checkpoint, "_write", write_until_full)
    with pytest.raises(TunelabError, match=r"the disk holding .* is full: the checkpoint at step 8 could not be "
                                           r"written \(the checkpoint at step 4 of 27, saved .* is kept\); free some "
                                           r"space, then run the same command with --resume"):
        train(cfg, log=lambda _: None)
    runs = Path(cfg["output"])
    assert sorted(p.name for p in runs.iterdir()) == [".full-disk.checkpoint"]  # no partial folder of any kind
    monkeypatch.setattr(Checkpoint, "_write", real)
    resumed = train(cfg, resume=True, log=lambda _: None)
    assert resumed["resumed_at_step"] == 4


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_saves_at_the_step_it_came_in_and_the_resume_is_exact(tiny_config, monkeypatch, signum):
    """Ctrl-C or `kill` (SIGTERM) during step 14: the step finishes, a checkpoint is saved at step 14 (the last
    periodic one was at 12), the run stops with KeyboardInterrupt / Terminated, and --resume ends exactly as an
    uninterrupted run."""
    import os
    import signal

    from tunelab.errors import Terminated
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # SIG_IGN in a background job
    straight = train(_config(tiny_config, "full", "straight"), log=lambda _: None)
    cfg = _config(tiny_config, "full", "signalled")
    real, calls = torch.optim.AdamW.step, {"n": 0}

    def step_then_signal(self, *args, **kwargs):
        calls["n"] += 1
        out = real(self, *args, **kwargs)
        if calls["n"] == 14:
            os.kill(os.getpid(), getattr(signal, signum))  # arrives inside the step
        return out

    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", step_then_signal)
        with pytest.raises(Terminated if signum == "SIGTERM" else KeyboardInterrupt):
            train(cfg, log=lambda _: None)
    runs = Path(cfg["output"])
    assert json.loads((runs / ".signalled.checkpoint" / "trainer_state.json").read_text())["train"]["step"] == 14
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # the handlers are put back
    logs: list[str] = []
    resumed = train(cfg, resume=True, log=logs.append)
    assert "resumed from the checkpoint at step 14 of 27 (epoch 2)" in logs
    a, b = _weights(runs / "straight"), _weights(runs / "signalled")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert _history(runs / "straight") == _history(runs / "signalled")
    assert resumed["test"] == straight["test"]


def test_complete_checkpoints_finds_the_older_one_when_a_kill_left_only_it(tmp_path):
    """`compare` asks this to decide on --resume: a kill between the renames of a save may leave only `.1`, and a
    newest folder without its trainer_state.json was never written whole."""
    from tunelab.training.checkpoint import complete_checkpoints
    run = tmp_path / "runs" / "lora"
    (tmp_path / "runs" / ".lora.checkpoint").mkdir(parents=True)  # begun, never finished
    (tmp_path / "runs" / ".lora.checkpoint.partial").mkdir()
    assert complete_checkpoints(run) == []
    older = tmp_path / "runs" / ".lora.checkpoint.1"
    older.mkdir()
    (older / "trainer_state.json").write_text("{}")
    assert complete_checkpoints(run) == [older]
