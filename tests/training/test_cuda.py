"""On a CUDA GPU: what a run does there that a CPU cannot show. bf16 autocast where the GPU has it, SDPA attention,
batches copied through pinned memory, the GPU allocator's peak in the run's metrics, the same training as a CPU in
fp32, and QLoRA (`method.quantize: 4bit`: a 4-bit base through bitsandbytes, LoRA on top).

Skipped without a GPU (CI has none). `bench/gpu_checks.sh` runs them on a GPU machine; the figures of the last such
run are in the README's "bigger models and more machines" section.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from tunelab.api import train
from tunelab.training.precision import to_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _metrics(result: dict | str) -> dict:
    """The run's metrics.json, with its history.jsonl as `history`."""
    folder = Path(result["run_folder"] if isinstance(result, dict) else result)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["history"] = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines() if line]
    return metrics


def test_a_gpu_run_trains_in_bf16_with_sdpa_and_records_the_gpu_peak(tiny_config):
    cfg = tiny_config("lora", train__precision="auto")
    result = train(cfg, log=lambda _: None)
    metrics = _metrics(result)
    assert metrics["device"] == "cuda"
    assert metrics["precision"] == "bf16" and torch.cuda.is_bf16_supported()
    assert metrics["memory"]["device_peak_mb"] > 0
    # The model tunelab prepares for training attends through SDPA (transformers' default where a model has it).
    from tunelab.pipeline import data_for, prepare
    from tunelab.settings import load_config
    from tunelab.tasks import task_for
    loaded = load_config(cfg)
    adapted = prepare(loaded, data_for(loaded, task_for(loaded)), log=lambda _: None)
    config = (adapted.model.get_base_model() if hasattr(adapted.model, "get_base_model") else adapted.model).config
    assert config._attn_implementation == "sdpa"


def test_a_batch_reaches_the_gpu_through_pinned_memory():
    batch = {"input_ids": torch.arange(12).view(3, 4), "attention_mask": torch.ones(3, 4, dtype=torch.long)}
    moved = to_device(batch, torch.device("cuda"))
    torch.cuda.synchronize()
    for key, value in batch.items():
        assert moved[key].device.type == "cuda"
        assert torch.equal(moved[key].cpu(), value)


def test_the_gpu_trains_as_the_cpu_does_in_fp32(tiny_config, tmp_path):
    """The same config, fp32, on the GPU here and on the CPU in a process that sees no GPU: the same losses and
    test metrics to float tolerance (the kernels differ, so bit equality is not expected). Without dropout: the GPU
    draws its masks from its own generator, so with dropout the two would train on different masks (on an H200 the
    losses then differed by up to 0.005)."""
    cfg = tiny_config("full", train__precision="fp32", train__dropout=0.0)
    gpu = _metrics(train(cfg, log=lambda _: None))
    cpu_cfg = dict(cfg, output=str(tmp_path / "cpu-runs"))
    config = tmp_path / "cpu.json"
    config.write_text(json.dumps(cpu_cfg))
    script = ("import json, sys; from tunelab.api import train; "
              "print('RUN ' + train(json.load(open(sys.argv[1])), log=lambda _: None)['run_folder'])")
    done = subprocess.run([sys.executable, "-c", script, str(config)], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, check=True)
    folder = next(line[4:] for line in done.stdout.splitlines() if line.startswith("RUN "))
    cpu = _metrics(folder)
    assert gpu["device"] == "cuda" and cpu["device"] == "cpu"
    assert cpu["memory"]["device_peak_mb"] is None
    gpu_losses = [r["train_loss"] for r in gpu["history"] if "train_loss" in r]
    cpu_losses = [r["train_loss"] for r in cpu["history"] if "train_loss" in r]
    assert len(gpu_losses) == len(cpu_losses) > 0
    assert gpu_losses == pytest.approx(cpu_losses, abs=1e-4)
    assert gpu["test"]["loss"] == pytest.approx(cpu["test"]["loss"], abs=1e-4)


def test_qlora_trains_lora_on_a_4bit_base_and_saves_an_adapter_peft_loads(tiny_config, tiny_llama):
    pytest.importorskip("bitsandbytes")
    cfg = tiny_config("lora", model=tiny_llama, method__quantize="4bit", train__precision="auto")
    result = train(cfg, log=lambda _: None)
    metrics = _metrics(result)
    losses = [r["train_loss"] for r in metrics["history"] if "train_loss" in r]
    assert losses and all(loss == loss and abs(loss) < 1e3 for loss in losses)  # finite
    assert metrics["memory"]["device_peak_mb"] > 0
    folder = Path(result["run_folder"]) / "model"
    assert (folder / "adapter_config.json").is_file()
    # The adapter goes on a full-precision base too (what a user serving without bitsandbytes does).
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=2)
    model = PeftModel.from_pretrained(base, folder).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_qlora_quantizes_the_base_model_s_linear_layers(tiny_config, tiny_llama):
    """The base really is 4-bit while training: bitsandbytes' Linear4bit replaces the frozen linear layers."""
    bnb = pytest.importorskip("bitsandbytes")
    from tunelab.pipeline import data_for, prepare
    from tunelab.settings import load_config
    from tunelab.tasks import task_for
    cfg = load_config(tiny_config("lora", model=tiny_llama, method__quantize="4bit"))
    task = task_for(cfg)
    adapted = prepare(cfg, data_for(cfg, task), log=lambda _: None)
    four_bit = [n for n, m in adapted.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit, "no Linear4bit layer in the QLoRA model"
    assert any("q_proj" in n for n in four_bit)
