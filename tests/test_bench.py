"""`bench/speed.py` (run by `make bench`) works end to end: here on the tiny models, one repeat, every recipe."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "speed.py"


@pytest.mark.long(seconds=30)
def test_speed_bench_runs_every_recipe_and_writes_its_table_and_json(tiny_bert, tiny_csv, tiny_llama,
                                                                     tiny_generation_jsonl, tmp_path):
    out = tmp_path / "speed.json"
    common = [sys.executable, str(BENCH), "--repeats", "1", "--precision", "fp32", "--json", str(out)]
    classification = subprocess.run(common + ["--cases", "minilm-lora", "--override", f"model={tiny_bert}",
                                              "--override", f"data.source={tiny_csv}"],
                                     capture_output=True, text=True, timeout=600)
    assert classification.returncode == 0, classification.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [r["recipe"] for r in results] == ["tunelab", "hf", "hf-best"]
    for r in results:
        assert r["examples"] > 0 and r["tokens"] >= r["examples"] and r["seconds"] > 0
        assert 0 < r["fraction_of_gemm_peak"] and r["flops"] > 0 and r["peak_rss_mib"] > 0
        assert 0 <= r["test_metric"] <= 1 and r["metric"] == "accuracy"
    assert results[1]["vs_hf"] == 1.0 and results[2]["vs_hf_best"] == 1.0
    for r in results:  # the accuracy difference to the Trainer's best recipe, paired on the same test examples
        difference, low, high = r["vs_hf_best_accuracy"]
        assert low <= difference <= high and abs(difference) <= 1
    assert results[2]["vs_hf_best_accuracy"] == [0.0, 0.0, 0.0]
    assert "| minilm-lora | tunelab |" in classification.stdout

    generation = subprocess.run(common + ["--cases", "smollm2-generation", "--override", f"model={tiny_llama}",
                                          "--override", f"data.source={tiny_generation_jsonl}"],
                                capture_output=True, text=True, timeout=600)
    assert generation.returncode == 0, generation.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert {r["metric"] for r in results} == {"chrf"} and len(results) == 3
    assert all(r["vs_hf_best_accuracy"] is None and r["test_metric_90"] is None for r in results)
    assert all(r["tokens"] > 0 for r in results)


def test_useful_flops_count_six_times_the_weights_for_full_training_and_four_for_frozen(tiny_llama):
    import torch

    sys.path.insert(0, str(BENCH.parent))
    from speed import useful_flops
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=2)  # every position counts
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 4 * model.config.num_hidden_layers * model.config.hidden_size * 10 * 10
    assert useful_flops(model, [10]) == 6 * linear * 10 + 2 * attention
    for p in model.parameters():
        p.requires_grad_(False)
    assert useful_flops(model, [10]) == 4 * linear * 10 + 2 * attention


def test_useful_flops_of_a_bert_classifier_count_the_last_layer_for_the_first_position(tiny_bert):
    """Its head reads position 0 only: the last layer's products but keys and values, and the head, count once
    per example, and the last layer's attention for one query."""
    import torch

    sys.path.insert(0, str(BENCH.parent))
    from speed import useful_flops
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    last, layers, hidden = model.bert.encoder.layer[-1], model.config.num_hidden_layers, model.config.hidden_size
    once = sum(m.weight.numel() for m in (last.attention.self.query, last.attention.output.dense,
                                          last.intermediate.dense, last.output.dense, model.bert.pooler.dense,
                                          model.classifier))
    every = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) - once
    attention = 4 * hidden * ((layers - 1) * 10 * 10 + 10)
    assert useful_flops(model, [10]) == 6 * every * 10 + 6 * once + 2 * attention
    assert useful_flops(model, [10, 10]) == 2 * useful_flops(model, [10])


def test_prompt_scoring_bench_renders_lm_evals_prompt_string_for_string(tiny_llama, tmp_path):
    """tunelab's side of `bench/prompt_scoring.py` (the lm-eval side needs its own venv: `make bench` only)."""
    import yaml
    from transformers import AutoTokenizer

    sys.path.insert(0, str(BENCH.parent))
    from prompt_scoring import TASK_YAML, peer_rows, run_tunelab
    train, test = peer_rows(12)
    for name, rows in (("rt_train.jsonl", train), ("rt_test.jsonl", test)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = yaml.safe_load(TASK_YAML.format(folder=tmp_path))
    assert task["doc_to_text"] == "Review: {{text}}\nSentiment:" and task["fewshot_config"]["sampler"] == "first_n"
    assert task["dataset_kwargs"]["data_files"]["test"] == f"{tmp_path}/rt_test.jsonl"
    labels = ["negative", "positive"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    for shots in (0, 4):
        r = run_tunelab(str(tiny_llama), str(tmp_path), shots, batch_size=4)
        # lm-eval's multiple_choice context: the first `shots` training rows, then the review; the choice follows
        # after target_delimiter " ".
        demos = [f"Review: {d['text']}\nSentiment: {labels[d['label']]}" for d in train[:shots]]
        assert r["first_context"] == "\n\n".join(demos + [f"Review: {test[0]['text']}\nSentiment:"])
        assert len(r["predictions"]) == 12 and len(r["logliks"][0]) == 2 and r["seconds"] > 0
        assert r["accuracy"] == sum(p == d["label"] for p, d in zip(r["predictions"], test)) / 12
        # Every review's tokens run once at least (a prefix shared by all runs once: the rest are fewer).
        tokens = [len(t) for t in tokenizer([f"Review: {d['text']}\nSentiment:" for d in test]).input_ids]
        assert max(tokens) < r["tokens"] <= sum(tokens) + 12 * shots * max(tokens)
        assert r["flops"] > 2 * body_weights(tiny_llama) * r["tokens"] and r["gemm_peak"] > 0


@pytest.mark.long(seconds=3)
def test_scaling_bench_writes_ms_per_example_and_memory_for_each_size(tiny_bert, tmp_path):
    out = tmp_path / "scaling.json"
    done = subprocess.run([sys.executable, str(BENCH.parent / "scaling.py"), "--sizes", "48,96", "--repeats", "1",
                           "--model", str(tiny_bert), "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [r["train_examples"] for r in results] == [48, 96]
    assert results[0]["vs_smallest"] == 1.0 and results[1]["ms_per_example"] > 0
    assert all(r["peak_rss_mib"] >= r["rss_loaded_mib"] > 0 for r in results)
    for r in results:  # resident memory sampled through training: the first half's peak, then the second's
        assert 0 < r["rss_first_half_mib"] and 0 < r["rss_second_half_mib"] <= r["peak_rss_mib"]
        assert r["growth_in_second_half_mib"] == round(r["rss_second_half_mib"] - r["rss_first_half_mib"], 1)
    assert "| 96 |" in done.stdout


def body_weights(folder) -> int:
    """The weights of a decoder's linear layers but its output head: the matrix products every token goes
    through (the head runs only for the logits kept)."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder)
    head = model.get_output_embeddings()
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
