"""The CLI end to end on a tiny model: train → eval → predict, and nothing a user had is overwritten."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from tunelab.cli import main


def _write_config(tmp_path, cfg) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_train_eval_predict(tiny_config, tiny_csv, tmp_path, capsys):
    config = _write_config(tmp_path, tiny_config("lora"))
    assert main(["train", config, "name=mine", "train.epochs=1"]) == 0
    run = tmp_path / "runs" / "mine"
    for name in ("config.yaml", "metrics.json", "history.jsonl", "predictions.jsonl", "model/adapter_config.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("validation", "test", "parameters", "time", "memory", "versions", "newly_initialised"):
        assert key in metrics
    assert metrics["newly_initialised"] == ["classifier"]
    assert metrics["parameters"]["trainable"] < metrics["parameters"]["total"]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 1
    capsys.readouterr()

    assert main(["eval", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == metrics["test"]["accuracy"]
    assert main(["eval", str(run), "--data", str(tiny_csv)]) == 0
    assert "confusion_matrix" in json.loads(capsys.readouterr().out)

    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "a great lovely film"}\n{"text": "an awful boring plot"}\n')
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(run), "--input", str(inputs), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["prediction"] in ("negative", "positive") for r in rows)


def test_an_existing_run_or_output_is_never_overwritten(tiny_config, tmp_path, capsys):
    config = _write_config(tmp_path, tiny_config("full"))
    assert main(["train", config, "name=kept", "train.epochs=1"]) == 0
    marker = tmp_path / "runs" / "kept" / "notes.txt"
    marker.write_text("mine")
    capsys.readouterr()
    assert main(["train", config, "name=kept", "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run folder") and "--overwrite" in err and err.count("\n") == 1
    assert marker.read_text() == "mine"
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".")]  # no partial folder left

    inputs = tmp_path / "in.csv"
    inputs.write_text("text\ngood film\n")
    out = tmp_path / "out.jsonl"
    out.write_text("precious")
    assert main(["predict", str(tmp_path / "runs" / "kept"), "--input", str(inputs), "--output", str(out)]) == 2
    assert out.read_text() == "precious"
    assert main(["train", config, "name=kept", "train.epochs=1", "--overwrite"]) == 0
    assert not marker.exists()


def test_errors_for_runs_and_commands(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a tunelab run folder" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file" in capsys.readouterr().err


def test_listing_commands(capsys):
    for command in ("datasets", "models", "methods", "config"):
        assert main([command]) == 0
    out = capsys.readouterr().out
    for name in ("rotten_tomatoes", "bbc_news", "minilm", "smollm2-135m", "lora", "adapter", "train.epochs"):
        assert name in out


def test_overrides_may_follow_options(tiny_config, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config("lora")))
    assert main(["config", str(path), "train.epochs=7"]) == 0
    assert "epochs: 7" in capsys.readouterr().out
    assert main(["train", str(path), "--overwrite", "train.epochs=1", "name=late"]) == 0
    assert json.loads((tmp_path / "runs" / "late" / "metrics.json").read_text())["epochs_run"] == 1
    try:
        main(["train", str(path), "--overwrite", "--nonsense"])
    except SystemExit as e:
        assert e.code == 2  # an unknown option is still argparse's usage error
    else:
        raise AssertionError("an unknown option was accepted")


def test_a_terminated_run_leaves_no_partial_folder_and_keeps_its_checkpoint(tiny_config, tmp_path):
    """SIGTERM (`kill`, a job scheduler, a CI timeout) cleans up as Ctrl-C does: no `.NAME.partial-*` folder; the
    checkpoint stays, and the message says how to go on from it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    config = _write_config(tmp_path, tiny_config("full"))
    process = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "train", config, "train.epochs=500",
                                "train.early_stopping.patience=500", "name=long"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout.readline().startswith("run ")  # the partial folder exists from here on
    checkpoint = tmp_path / "runs" / ".long.checkpoint"
    deadline = time.time() + 60
    while not checkpoint.is_dir() and time.time() < deadline:  # one is written at the end of each epoch
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated; no half-written output was left"
    assert re.search(r"the checkpoint at step \d+ of 4500, saved .* stays in .*\.long\.checkpoint: the same "
                     r"command with --resume continues from there", out), out
    # The checkpoint saved at the step the signal came in, and the epoch's one before it; nothing partial, no lock.
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [".long.checkpoint", ".long.checkpoint.1"]


def test_a_killed_run_resumes_exactly(tiny_config, tmp_path, capsys):
    """`kill -9` (an OOM kill, a power cut): no cleanup runs at all; `--resume` continues from the last checkpoint
    and ends with the weights of a run that was never stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch
    from safetensors.torch import load_file
    cfg = tiny_config("lora")
    cfg["train"].update(epochs=12, checkpoint_every=3)
    config = _write_config(tmp_path, cfg)
    assert main(["train", config, "name=straight"]) == 0
    process = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "train", config, "name=killed"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = tmp_path / "runs" / ".killed.checkpoint"
    deadline = time.time() + 60
    while not checkpoint.is_dir() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    # A warm process (tests/warm) is a stand-in whose forked child kills itself within milliseconds: the pipes
    # close only once that child is gone too, so the commands below meet no live lock holder.
    process.communicate(timeout=60)
    assert not (tmp_path / "runs" / "killed").exists(), "the run finished before it could be killed"
    capsys.readouterr()
    assert main(["train", config, "name=killed"]) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert main(["train", config, "name=killed", "--resume"]) == 0
    assert "resumed from the checkpoint at step" in capsys.readouterr().out
    a = load_file(tmp_path / "runs" / "straight" / "model" / "adapter_model.safetensors")
    b = load_file(tmp_path / "runs" / "killed" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["killed", "straight"]


def test_a_full_disk_while_writing_the_run_folder_is_one_line_and_leaves_no_partial_folder(tiny_config, tmp_path,
                                                                                           monkeypatch, capsys):
    import errno

    from tunelab.runs import RunWriter

    def full(self, name, rows):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path(name)))

    monkeypatch.setattr(RunWriter, "jsonl", full)
    config = _write_config(tmp_path, tiny_config("lora"))
    assert main(["train", config, "name=nospace"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the disk is full (") and "--resume" in err[0]
    left = sorted(p.name for p in (tmp_path / "runs").iterdir())
    # The epochs' checkpoints are kept (the newest and the one before); no run, partial folder or lock.
    assert left == [".nospace.checkpoint", ".nospace.checkpoint.1"]


@pytest.mark.cold_processes  # the command's own exit, not the warm interpreter's
@pytest.mark.parametrize("argv, status", [(["methods"], 0), (["train", "missing.yaml"], 2)])
def test_the_command_exits_with_its_status_after_threads_and_atexit_handlers(argv, status, tmp_path):
    """`tunelab` skips the interpreter's teardown (`cli.run`), not what an exit must still do: a non-daemon thread
    finishes, atexit handlers run, buffered output is written, the status is the command's."""
    import subprocess
    import sys
    script = ("import atexit, sys, threading, time\n"
              "from tunelab import cli\n"
              "atexit.register(lambda: print('atexit ran', flush=True))\n"
              "threading.Thread(target=lambda: (time.sleep(0.5), print('thread ended'))).start()\n"
              "sys.stdout.write('buffered, no newline')\n"
              f"sys.argv = ['tunelab', *{argv!r}]\n"
              "cli.run()\n"
              "print('not reached')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == status, done.stderr
    assert "thread ended" in done.stdout and "atexit ran" in done.stdout and "buffered, no newline" in done.stdout
    assert done.stdout.index("thread ended") < done.stdout.index("atexit ran")
    assert "not reached" not in done.stdout
    if status == 2:
        assert done.stderr.startswith("error: config file") and "Traceback" not in done.stderr
