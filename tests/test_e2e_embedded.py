"""End to end on the embedded models and data (small subsets, so that CI stays fast)."""
from __future__ import annotations

import json
import os

import pytest

from tunelab import models
from tunelab.api import train

pytestmark = pytest.mark.e2e
# The two longest runs (two minutes each here) go with `make test-all`, which sets TUNELAB_SLOW: `make test` stays
# within its time, and the shorter runs above still take every family through the embedded models.
long_run = pytest.mark.skipif(not os.environ.get("TUNELAB_SLOW"), reason="a long run on an embedded model: "
                              "make test-all")


def _config(method: str, tmp_path, epochs: int = 1, **method_options) -> dict:
    return {"task": "classification", "model": "minilm",
            "data": {"source": "rotten_tomatoes", "max_examples": 1200, "max_length": 48},
            "method": {"name": method, **method_options},
            "train": {"epochs": epochs, "batch_size": 16}, "output": str(tmp_path)}


@pytest.mark.long(seconds=54)
def test_lora_on_rotten_tomatoes_beats_the_majority_class(tmp_path):
    metrics = train(_config("lora", tmp_path, epochs=2), log=lambda _: None)
    assert metrics["test"]["accuracy"] > 0.65  # majority class: 0.58
    assert metrics["parameters"]["trainable_percent"] < 2
    assert metrics["newly_initialised"] == ["classifier"]
    assert metrics["trained_head_modules"] == ["bert.pooler", "classifier"]


@pytest.mark.long(seconds=25)
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


@pytest.mark.long(seconds=91)
def test_smollm2_prompt_search_scores_rotten_tomatoes_labels(tmp_path):
    """The decoder's label scoring on real reviews: well above the majority class (0.58) on 120 held-out ones."""
    metrics = train({"task": "classification", "model": "smollm2-135m",
                     "data": {"source": "rotten_tomatoes", "max_examples": 600, "max_length": 48,
                              "split": {"validation": 0.1, "test": 0.2}},
                     "method": {"name": "prompt", "description": "Is the sentiment of this movie review positive "
                                "or negative?", "templates": ["Review: {text}"],
                                "label_templates": ["Sentiment: {label}"], "shots": [0], "calibrate": [False]},
                     "output": str(tmp_path)}, log=lambda _: None)
    assert metrics["test"]["accuracy"] > 0.7
    search = [json.loads(line) for line in open(f"{metrics['run_folder']}/prompt_search.jsonl")]
    assert len(search) == 4 and max(r["validation_f1"] for r in search) == metrics["validation"]["f1"]


@long_run
def test_smollm2_chat_lora_lowers_held_out_perplexity(tmp_path):
    """Chat SFT on a slice of chatterbot, compared with the base model's zero-shot answers: the table holds the
    generation metrics and LoRA's held-out perplexity is well below the base model's."""
    from tunelab.comparison import compare, table_rows
    config = {"task": "generation", "model": "smollm2-135m",
              "data": {"source": "chatterbot", "max_examples": 160, "max_length": 64,
                       "split": {"validation": 0.1, "test": 0.1}},
              "method": {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj",
                                                                                  "o_proj"]},
              "methods": {"prompt": {"shots": [0]}},
              "generation": {"max_new_tokens": 16, "stop": ["\n\n"]},
              "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "early_stopping": {"patience": 0}},
              "output": str(tmp_path / "runs")}
    result = compare(config, ["prompt", "lora"], output=tmp_path / "cmp", name="chat", log=lambda _: None)
    assert [r["status"] for r in result["rows"]] == ["ok", "ok"]
    assert table_rows(result)[0][2:6] == ["test chrf (± 90% interval)", "test bleu", "test f1", "test perplexity"]
    base, lora = (r["test"]["perplexity"] for r in result["rows"])
    assert lora < 0.8 * base, (base, lora)


@long_run
def test_minilm_extractive_qa_on_the_builtin_questions(tmp_path):
    """Full fine-tuning of MiniLM on tunelab_qa finds answer spans: F1 well above the best trivial baseline (a
    best-overlap sentence, 0.18 F1 on the same test questions)."""
    metrics = train({"task": "extractive_qa", "model": "minilm", "data": {"source": "tunelab_qa", "max_length": 192,
                              "split": {"validation": 0.1, "test": 0.15}},
                     "method": {"name": "full"},
                     "train": {"epochs": 3, "batch_size": 8, "learning_rate": 1e-4,
                               "early_stopping": {"patience": 0}},
                     "output": str(tmp_path)}, log=lambda _: None)
    assert metrics["test"]["f1"] > 0.3 and 0 < metrics["test"]["exact_match"] <= metrics["test"]["f1"]
