"""End to end on the embedded models and data (small subsets, so that CI stays fast)."""
from __future__ import annotations

import json

import pytest

from tunelab import models
from tunelab.api import train

pytestmark = pytest.mark.e2e


def _config(method: str, tmp_path, epochs: int = 1, **method_options) -> dict:
    return {"task": "classification", "model": "minilm",
            "data": {"source": "rotten_tomatoes", "max_examples": 1200, "max_length": 48},
            "method": {"name": method, **method_options},
            "train": {"epochs": epochs, "batch_size": 16}, "output": str(tmp_path)}


def test_lora_on_rotten_tomatoes_beats_the_majority_class(tmp_path):
    metrics = train(_config("lora", tmp_path, epochs=2), log=lambda _: None)
    assert metrics["test"]["accuracy"] > 0.65  # majority class: 0.58
    assert metrics["parameters"]["trainable_percent"] < 2
    assert metrics["newly_initialised"] == ["classifier"]
    assert metrics["trained_head_modules"] == ["bert.pooler", "classifier"]


def test_prompt_search_on_rotten_tomatoes(tmp_path):
    metrics = train(_config("prompt", tmp_path, shots=[0, 16], verbalizers={"positive": ["good"],
                                                                              "negative": ["bad"]}),
                    log=lambda _: None)
    assert metrics["test"]["accuracy"] > 0.6
    search = [json.loads(line) for line in open(f"{metrics['run_folder']}/prompt_search.jsonl")]
    zero_shot_plain = next(r for r in search if r["template"] == "{text}" and r["label_template"] == "{label}"
                           and r["shots"] == 0 and not r["calibrate"])
    assert metrics["validation"]["f1"] >= zero_shot_plain["validation_f1"]


def test_smollm2_alias_is_converted_once_and_generates(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM
    folder = models.resolve("smollm2-135m")
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
    assert models.family(folder) == "decoder"
    assert models.resolve("smollm2-135m") == folder  # cached: no second conversion
    tokenizer = models.load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])
