"""Sharded full fine-tuning (`training/fsdp.py`): `accelerate launch` with configs/distributed/fsdp.yaml, or torchrun
with `train.fsdp=true`, 2 processes with gloo on the CPU, trains as one process does at the same global batch, saves
the whole model (which `from_pretrained` loads), resumes exactly, and generates the same answers.

Tolerance, as in test_ddp: the processes sum each step's gradients in another order than one process sums a batch's
(here by reduce-scatter), so floats differ in their last bits (measured: weights within 6e-8 for the BERT and 2.4e-7
for the Llama, losses within 7e-8 and 2.5e-6); losses must agree to 1e-5, weights to 1e-4, and every prediction
must be the same. Dropout is off: with it each process draws its own
masks, by design. The split leaves a last training batch of one example (process 1 trains a stand-in row with weight
0) and a last validation batch of one feature (process 1 runs a stand-in forward), which every process must run
together under FSDP."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from conftest import one_thread_env
from test_ddp import CRASHING, _files, _rows, _torchrun, _weights

from tunelab.api import train
from tunelab.errors import ConfigError
from tunelab.training.fsdp import Options

LAUNCH_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "distributed" / "fsdp.yaml"


def _accelerate(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
                           str(LAUNCH_CONFIG), "-m", "tunelab.cli", "train", str(config), *args],
                          env=one_thread_env(), capture_output=True, text=True, timeout=240)


def _close(m1: dict, m2: dict, h1: list[dict], h2: list[dict]) -> None:
    for split in ("validation", "test"):
        assert m1[split]["loss"] == pytest.approx(m2[split]["loss"], abs=1e-5)
    assert (m1["best_epoch"], m1["epochs_run"]) == (m2["best_epoch"], m2["epochs_run"])
    assert [(r["step"], r["epoch"]) for r in h1] == [(r["step"], r["epoch"]) for r in h2]
    for r1, r2 in zip(h1, h2):
        for key in ("train_loss", "validation_loss"):
            if key in r1:
                assert r1[key] == pytest.approx(r2[key], abs=1e-5), (r1, r2)


@pytest.mark.long(seconds=23)
def test_fsdp_full_fine_tuning_trains_as_one_process_saves_the_whole_model_and_resumes_exactly(tiny_config, tmp_path):
    # 73 training examples: batches of 8 end on a batch of 1 (process 1: a stand-in); 24 validation features in
    # batches of 23 end on one of 1. The lowest layer and the embeddings frozen (freeze_layers), checkpoints every 4
    # steps (10 steps an epoch).
    cfg = tiny_config("full", data__split={"validation": 0.2, "test": 0.19}, method__freeze_layers=1,
                      train__dropout=0.0, train__learning_rate=1e-3, train__epochs=2, train__checkpoint_every=4,
                      train__eval_batch_size=23)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    runs = Path(cfg["output"])
    lines: list[str] = []
    train(cfg, ["name=one"], log=lines.append)
    assert "(73 train / 24 validation / 23 test)" in lines[0], lines[0]

    two = _accelerate(config, "name=two")  # accelerate's FSDP: ACCELERATE_USE_FSDP and its FSDP_* variables
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = runs / "one", runs / "two"
    assert _files(a) == _files(b), "the FSDP run folder lacks or adds files"
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert ("FSDP: weights, gradients and optimizer state sharded over 2 processes, 4 units: BertEmbeddings, "
            "2 BertLayer and the rest of BertForSequenceClassification") in two.stdout, two.stdout
    assert m2["processes"] == 2 and yaml.safe_load((b / "config.yaml").read_text())["train"]["fsdp"] is True
    assert m1["parameters"] == m2["parameters"]  # the whole model's counts, not one process's shards
    _close(m1, m2, _rows(a / "history.jsonl"), _rows(b / "history.jsonl"))
    # Epoch 1 was the best: its weights, kept as shards (and in the checkpoints whole), were restored at the end.
    assert m2["best_epoch"] == 1 and m2["epochs_run"] == 2 and "restored the weights of epoch 1" in two.stdout
    for split in ("validation", "test"):
        assert m1[split]["confusion_matrix"] == m2[split]["confusion_matrix"]
    for name in ("predictions.jsonl", "validation_predictions.jsonl"):
        p1, p2 = _rows(a / name), _rows(b / name)
        assert [r["prediction"] for r in p1] == [r["prediction"] for r in p2]
        for r1, r2 in zip(p1, p2):
            assert r1["scores"] == pytest.approx(r2["scores"], abs=1e-4)

    # The saved model is the whole, unsharded weights: every tensor at its full shape, trained ones changed, frozen
    # ones (embeddings, layer 0) as in the base model, all within 1e-4 of the 1-process run's.
    w1, w2 = _weights(a), _weights(b)
    assert w1.keys() == w2.keys()
    base = _base_weights(Path(cfg["model"]))
    for k in w1:
        assert w1[k].shape == w2[k].shape
        torch.testing.assert_close(w1[k], w2[k], atol=1e-4, rtol=0, msg=lambda m: f"{k}: {m}")
    trained = "bert.encoder.layer.1.attention.self.query.weight"
    assert not torch.equal(w2[trained], base[trained]), f"{trained} did not train: the comparison proves nothing"
    frozen = ["bert.encoder.layer.0.attention.self.query.weight", "bert.embeddings.word_embeddings.weight"]
    assert all(torch.equal(w2[k], base[k]) for k in frozen), "a frozen weight changed"
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(b / "model")
    inputs = tokenizer(["the film was superb", "a dull plot"], return_tensors="pt", padding=True)
    outs = [AutoModelForSequenceClassification.from_pretrained(r / "model").eval()(**inputs).logits for r in (a, b)]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=0)

    # Killed before step 14 (mid-epoch 2), under torchrun with train.fsdp=true (the config accelerate's run
    # recorded): the checkpoint of step 12, whole tensors gathered from both processes, resumes both, sharded again.
    script = tmp_path / "crashing.py"
    script.write_text(CRASHING)
    crashed = _torchrun(config, "name=resumed", "train.fsdp=true", script=script, env={"CRASH_AT_STEP": "14"})
    assert crashed.returncode != 0 and not (runs / "resumed").exists()
    saved = load_file(runs / ".resumed.checkpoint" / "weights.safetensors")
    assert saved[trained].shape == w1[trained].shape, "the checkpoint holds a shard, not the whole weight"
    resumed = _torchrun(config, "name=resumed", "train.fsdp=true", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from the checkpoint at step 12 of 20 (epoch 2)" in resumed.stdout, resumed.stdout
    w3 = _weights(runs / "resumed")
    for k in w2:
        assert torch.equal(w2[k], w3[k]), f"{k} differs after the FSDP resume"
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(_rows(b / "history.jsonl")) == strip(_rows(runs / "resumed" / "history.jsonl"))


def _base_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The base model's weights, under the names the classification model saves them (`bert.` first)."""
    return {f"bert.{k}": v for k, v in load_file(folder / "model.safetensors").items()}


def test_fsdp_generation_is_the_one_process_run(tiny_generation_config, tmp_path):
    # A decoder (tiny Llama, its LlamaDecoderLayer blocks sharded) fully fine-tuned with gradient accumulation (2
    # micro-batches of 4 a step; 49 training examples end on a step of one, where process 1 trains a stand-in);
    # answers generated in batches of 2 over unequal parts (the process with fewer prompts makes a stand-in call),
    # every process stepping together.
    cfg = tiny_generation_config("full")
    cfg["data"]["split"] = {"validation": 0.1, "test": 0.085}
    cfg["train"].update(epochs=2, dropout=0.0, learning_rate=3e-3, eval_batch_size=2, batch_size=4,
                        gradient_accumulation_steps=2)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    train(cfg, ["name=one"], log=lambda _: None)
    two = _torchrun(config, "name=two", "train.fsdp=true")
    assert two.returncode == 0, two.stderr[-3000:]
    runs = Path(cfg["output"])
    assert "(49 train / 6 validation / 5 test)" in two.stdout, two.stdout  # an odd test split: parts of 3 and 2
    assert "2 processes, 3 units: 2 LlamaDecoderLayer and the rest of LlamaForCausalLM" in two.stdout, two.stdout
    m1, m2 = (json.loads((runs / n / "metrics.json").read_text()) for n in ("one", "two"))
    _close(m1, m2, _rows(runs / "one" / "history.jsonl"), _rows(runs / "two" / "history.jsonl"))
    p1, p2 = _rows(runs / "one" / "predictions.jsonl"), _rows(runs / "two" / "predictions.jsonl")
    assert len(p1) == len(p2) == 5 and [r["prediction"] for r in p1] == [r["prediction"] for r in p2]
    assert _files(runs / "one") == _files(runs / "two")


def test_fsdp_with_another_method_than_full_is_refused_in_one_line(tiny_config, tmp_path, monkeypatch, capsys):
    # accelerate's FSDP config with LoRA: refused before any process waits for another (WORLD_SIZE alone, as
    # torchrun sets it), by the CLI with exit status 2.
    from tunelab.cli import main
    config = tmp_path / "lora.yaml"
    config.write_text(yaml.safe_dump(tiny_config("lora")))
    for k, v in {"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "2", "RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    assert main(["train", str(config)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: `train.fsdp` (FSDP, set by torchrun's train.fsdp=true or an accelerate config with distributed_type: "
        "FSDP) shards full fine-tuning only, got method 'lora'; set method.name=full, or train lora data-parallel "
        "without sharding (torchrun, or configs/distributed/ddp.yaml)"]
    assert not Path(yaml.safe_load(config.read_text())["output"]).exists()


@pytest.mark.parametrize("env, expected", [
    ({"FSDP_VERSION": "1"}, "fsdp_version 1 is FSDP1; tunelab shards with FSDP2 (fully_shard): set fsdp_version: 2"),
    ({"FSDP_OFFLOAD_PARAMS": "true", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT"},
     "fsdp_state_dict_type SHARDED_STATE_DICT is not done"),
    ({"FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"}, "fsdp_auto_wrap_policy SIZE_BASED_WRAP is not done"),
])
def test_an_fsdp_setting_tunelab_does_not_do_is_refused_in_one_line(tiny_config, monkeypatch, env, expected):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        train(tiny_config("full"), log=lambda _: None)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith("the accelerate FSDP config asks for what")
    assert expected in message and "configs/distributed/fsdp.yaml" in message
    if "FSDP_OFFLOAD_PARAMS" in env:  # every problem at once
        assert "fsdp_offload_params: true is not supported" in message


def test_train_fsdp_in_one_process_is_refused_in_one_line(tiny_config):
    with pytest.raises(ConfigError, match=r"^`train.fsdp` shards the model over the processes"):
        train(tiny_config("full"), ["train.fsdp=true"], log=lambda _: None)


@pytest.mark.parametrize("env, expected", [
    ({}, Options(reshard_after_forward=True, wrap=None)),  # the model's own _no_split_modules
    ({"FSDP_RESHARD_AFTER_FORWARD": "false", "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer, LlamaMLP"},
     Options(reshard_after_forward=False, wrap=("LlamaDecoderLayer", "LlamaMLP"))),
    ({"FSDP_AUTO_WRAP_POLICY": "NO_WRAP", "FSDP_BACKWARD_PREFETCH": "BACKWARD_PRE", "FSDP_MIN_NUM_PARAMS": "100"},
     Options(reshard_after_forward=True, wrap=())),  # the root alone; FSDP1's and size-based settings change nothing
])
def test_the_accelerate_fsdp_settings_tunelab_honours(monkeypatch, env, expected):
    # What `accelerate launch` sets from configs/distributed/fsdp.yaml, changed by `env`.
    for k, v in {"FSDP_VERSION": "2", "FSDP_SHARDING_STRATEGY": "FULL_SHARD", "FSDP_OFFLOAD_PARAMS": "false",
                 "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT", "FSDP_SYNC_MODULE_STATES": "true", **env}.items():
        monkeypatch.setenv(k, v)
    assert Options.from_launch() == expected
