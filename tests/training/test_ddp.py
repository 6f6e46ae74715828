"""Data-parallel training (`training/distributed.py`): `torchrun --nproc_per_node 2 tunelab train` with gloo on the
CPU trains as one process does at the same global batch, writes the same run folder, and resumes exactly; so does
`accelerate launch --multi_gpu --num_processes 2`.

Tolerance: the two processes sum each step's gradients in another order than one process sums a batch's, so floats
differ in their last bits (~1e-7 measured); the losses must agree to 1e-5, the weights to 1e-4, and every prediction
must be the same. Dropout is off (the model's and LoRA's): with it, each process draws its own masks, as it should,
and the two runs differ by design."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from conftest import one_thread_env

from tunelab.api import train

LAUNCH_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "distributed" / "ddp.yaml"

# Crashes both processes (like a kill) before their STEP-th optimizer update, as tests/training/test_checkpoint does.
CRASHING = """
import os, sys, torch
real, calls = torch.optim.AdamW.step, {"n": 0}
def step(self, *a, **k):
    calls["n"] += 1
    if calls["n"] == int(os.environ["CRASH_AT_STEP"]):
        raise SystemExit(f"killed before step {calls['n']}")
    return real(self, *a, **k)
torch.optim.AdamW.step = step
from tunelab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _config(tiny_config, tmp_path: Path, **train_keys) -> Path:
    # 75 training examples: batches of 8 end on a batch of 3, split 2 + 1; 24 validation and 21 test examples split
    # unevenly too. Checkpoints every 4 steps (10 steps an epoch).
    cfg = tiny_config("lora", data__split={"validation": 0.2, "test": 0.175}, train__dropout=0.0,
                      method__dropout=0.0, train__learning_rate=0.01, train__epochs=2, train__checkpoint_every=4)
    cfg["train"].update(train_keys)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _torchrun(config: Path, *args: str, script: str | None = None, env: dict | None = None,
              processes: int = 2) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    if script:
        program = [str(script)]
    else:
        program = ["-m", "tunelab.cli"]
    return subprocess.run([*launcher, *program, "train", str(config), *args], env={**one_thread_env(), **(env or {})},
                          capture_output=True, text=True, timeout=240)


def _one_process_and_two(cfg: dict, tmp_path: Path) -> Path:
    """Trains `cfg` as run `one` in one process and as run `two` under torchrun with 2; returns their folder."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    one = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", str(config), "name=one"], env=one_thread_env(),
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(config, "name=two")
    assert two.returncode == 0, two.stderr[-3000:]
    return Path(cfg["output"])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    out = {k: v for f in sorted((run / "model").glob("*.safetensors")) for k, v in load_file(f).items()}
    assert out, f"no weights in {run}"
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


@pytest.mark.long(seconds=29)
def test_two_processes_train_as_one_at_the_same_global_batch_and_resume_exactly(tiny_config, tmp_path):
    config = _config(tiny_config, tmp_path)
    runs = Path(yaml.safe_load(config.read_text())["output"])
    one = train(yaml.safe_load(config.read_text()), ["name=one"], log=lambda _: None)

    two = _torchrun(config, "name=two")
    assert two.returncode == 0, two.stderr[-3000:]
    # Rank 0 alone logs: each line once.
    assert two.stdout.count("epoch 1/2: validation loss") == 1, two.stdout
    assert "data-parallel over 2 processes (4 examples of each batch of 8 per process)" in two.stdout

    a, b = runs / "one", runs / "two"
    assert _files(a) == _files(b), "the 2-process run folder lacks or adds files"
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert m2["processes"] == 2 and "processes" not in m1
    for split in ("validation", "test"):
        assert m1[split]["loss"] == pytest.approx(m2[split]["loss"], abs=1e-5)
        assert m1[split]["confusion_matrix"] == m2[split]["confusion_matrix"]
    assert (m1["best_epoch"], m1["epochs_run"]) == (m2["best_epoch"], m2["epochs_run"])
    h1, h2 = _rows(a / "history.jsonl"), _rows(b / "history.jsonl")
    assert [(r["step"], r["epoch"]) for r in h1] == [(r["step"], r["epoch"]) for r in h2]
    for r1, r2 in zip(h1, h2):
        for key in ("train_loss", "validation_loss"):
            if key in r1:
                assert r1[key] == pytest.approx(r2[key], abs=1e-5), (r1, r2)
    w1, w2 = _weights(a), _weights(b)
    assert w1.keys() == w2.keys()
    assert any(k.startswith("base_model") and "lora_B" in k and w1[k].abs().max() > 1e-3 for k in w1), \
        "LoRA did not train: the comparison would prove nothing"
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-4, rtol=0, msg=lambda m: f"{k}: {m}")
    # Every example predicted once, in order (the gathered parts of two processes, none twice, none lost).
    for name in ("predictions.jsonl", "validation_predictions.jsonl"):
        p1, p2 = _rows(a / name), _rows(b / name)
        assert [r["text"] for r in p1] == [r["text"] for r in p2]
        assert [r["prediction"] for r in p1] == [r["prediction"] for r in p2]
        for r1, r2 in zip(p1, p2):
            assert r1["scores"] == pytest.approx(r2["scores"], abs=1e-4)

    # `accelerate launch` with the shipped configs/distributed/ddp.yaml (distributed_type MULTI_GPU) starts the
    # same processes through torchrun's machinery, on CPUs too (without MULTI_GPU, on a machine without GPUs, it
    # starts one): the same run, bit for bit.
    accelerate = subprocess.run([str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
                                 str(LAUNCH_CONFIG), "-m", "tunelab.cli", "train", str(config), "name=accelerate"],
                                env=one_thread_env(), capture_output=True, text=True, timeout=240)
    assert accelerate.returncode == 0, accelerate.stderr[-3000:]
    assert json.loads((runs / "accelerate" / "metrics.json").read_text())["processes"] == 2
    w4 = _weights(runs / "accelerate")
    assert all(torch.equal(w2[k], w4[k]) for k in w2)

    # Killed before step 14 (mid-epoch 2): the checkpoint of step 12, written by rank 0, resumes both processes.
    script = tmp_path / "crashing.py"
    script.write_text(CRASHING)
    crashed = _torchrun(config, "name=resumed", script=script, env={"CRASH_AT_STEP": "14"})
    assert crashed.returncode != 0
    assert (runs / ".resumed.checkpoint" / "trainer_state.json").is_file()
    assert not (runs / "resumed").exists()
    resumed = _torchrun(config, "name=resumed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from the checkpoint at step 12 of 20 (epoch 2)" in resumed.stdout, resumed.stdout
    c = runs / "resumed"
    w3 = _weights(c)
    for k in w2:
        assert torch.equal(w2[k], w3[k]), f"{k} differs after the 2-process resume"
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(_rows(b / "history.jsonl")) == strip(_rows(c / "history.jsonl"))
    assert not (runs / ".resumed.checkpoint").exists(), "the checkpoint outlived the finished run"


def test_a_batch_that_does_not_split_over_the_processes_is_refused_in_one_line(tiny_config, tmp_path):
    config = _config(tiny_config, tmp_path, batch_size=7)
    # The check runs before the process joins the others: WORLD_SIZE alone (as torchrun sets it) is enough.
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", str(config)],
                          env={**one_thread_env(), "WORLD_SIZE": "2", "RANK": "0"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: `train.batch_size` is the batch of all 2 processes together, so it must be a multiple of 2, got 7; "
        "set train.batch_size=6 or 8, or start a number of processes that divides it (torchrun --nproc_per_node)"]


def test_an_accelerate_config_asking_for_deepspeed_is_refused_in_one_line(tiny_config, tmp_path):
    # `accelerate launch` with distributed_type DEEPSPEED sets this; the loop would run it as plain data parallelism.
    # (FSDP is done: test_fsdp.py.)
    config = _config(tiny_config, tmp_path)
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", str(config)],
                          env={**one_thread_env(), "ACCELERATE_USE_DEEPSPEED": "true"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the accelerate config asks for DeepSpeed"), done.stderr
    assert "configs/distributed/ddp.yaml" in lines[0] and "configs/distributed/fsdp.yaml" in lines[0]


@pytest.mark.long(seconds=20)
def test_generation_with_early_stopping_under_two_processes_is_the_one_process_run(tiny_generation_config, tmp_path):
    # Generation: answers generated by each process for its part of the prompts and gathered, the loss weighted by
    # answer tokens across processes; early stopping (patience 1) ends both runs at the same epoch.
    cfg = tiny_generation_config("lora")
    cfg["method"]["dropout"] = 0.0
    cfg["train"].update(epochs=3, dropout=0.0, learning_rate=0.01, early_stopping={"patience": 1})
    runs = _one_process_and_two(cfg, tmp_path)
    m1, m2 = (json.loads((runs / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert m1["stopped_early"] and m2["stopped_early"] and m1["epochs_run"] == m2["epochs_run"] < 3
    assert m1["test"]["loss"] == pytest.approx(m2["test"]["loss"], abs=1e-5)
    p1, p2 = _rows(runs / "one" / "predictions.jsonl"), _rows(runs / "two" / "predictions.jsonl")
    assert len(p1) == len(p2) > 2 and [r["prediction"] for r in p1] == [r["prediction"] for r in p2]
    assert _files(runs / "one") == _files(runs / "two")


@pytest.mark.parametrize("command", ["compare", "tune"])
def test_compare_and_tune_under_torchrun_are_refused_in_one_line(tiny_config, tmp_path, command):
    config = _config(tiny_config, tmp_path)
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", command, str(config)],
                          env={**one_thread_env(), "WORLD_SIZE": "2", "RANK": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: `tunelab {command}` runs in one process and starts its own; launch it without torchrun or "
        f"accelerate (data-parallel training is `torchrun ... tunelab train CONFIG`)"]
    assert not Path(yaml.safe_load(config.read_text())["output"]).exists()


@pytest.mark.long(seconds=13)
def test_extractive_qa_under_two_processes_is_the_one_process_run(tiny_qa_config, tmp_path):
    # Extractive QA: several windows per long context, per-token logits gathered by feature and read back into one
    # answer per question. transformers' span loss is a softmax over every position of the padded batch, padding
    # included: each process's rows are collated with the whole batch, so they are padded as one process pads them.
    cfg = tiny_qa_config("full")
    cfg["train"].update(dropout=0.0, learning_rate=1e-3)
    runs = _one_process_and_two(cfg, tmp_path)
    assert _files(runs / "one") == _files(runs / "two")
    m1, m2 = (json.loads((runs / n / "metrics.json").read_text()) for n in ("one", "two"))
    for split in ("validation", "test"):
        assert m1[split]["loss"] == pytest.approx(m2[split]["loss"], abs=1e-5)
        assert m1[split]["f1"] == m2[split]["f1"] and m1[split]["exact_match"] == m2[split]["exact_match"]
    h1, h2 = _rows(runs / "one" / "history.jsonl"), _rows(runs / "two" / "history.jsonl")
    for r1, r2 in zip(h1, h2):
        for key in ("train_loss", "validation_loss"):
            if key in r1:
                assert r1[key] == pytest.approx(r2[key], abs=1e-5), (r1, r2)
    for name in ("predictions.jsonl", "validation_predictions.jsonl"):
        p1, p2 = _rows(runs / "one" / name), _rows(runs / "two" / name)
        assert len(p1) == len(p2) > 2
        assert [(r["question"], r["prediction"]) for r in p1] == [(r["question"], r["prediction"]) for r in p2]
        # A score is a start logit plus an end logit. The span loss (a softmax over positions) does not see a shift
        # of all logits, so the span head's bias gets gradients of rounding size only, which AdamW scales up to
        # steps of the learning rate's size: both runs' scores may be offset by one constant (0.0008, then 0.0014
        # after another batch order, with losses equal to 1e-5). The scores are compared up to that constant.
        s1, s2 = np.array([r["score"] for r in p1]), np.array([r["score"] for r in p2])
        assert s1 - s1.mean() == pytest.approx(s2 - s2.mean(), abs=3e-4)  # rounded to 4 places
        assert abs(s1.mean() - s2.mean()) < 0.01
