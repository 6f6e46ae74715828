"""The prompt method on the generation task: demonstrations in the prompt, a search over templates ×
shots by the run's metric, likelihood metrics without generating, and a saved prompt that reloads."""
from __future__ import annotations

import json

import pytest

from tunelab.api import evaluate
from tunelab.cli import main
from tunelab.data import Example
from tunelab.methods.prompt import Candidate, PromptEngineering, PromptOptions
from tunelab.methods.prompt_generation import GenerationPrompter
from tunelab.tasks.generation import GenerationOptions, GenerationTask

TRAIN = [Example(f"repeat {w}", w) for w in ("red", "blue", "green", "cat", "dog")]
VALIDATION = [Example("repeat sun", "sun"), Example("repeat moon", "moon")]


def test_plain_prompt_shows_demonstrations_then_the_input(llama_tokenizer):
    task = GenerationTask(GenerationOptions(template="Copy: {source}", chat_template="off"))
    shown = task.with_prompt("Copy: {text}", TRAIN[:2])
    assert shown.prompt_text(llama_tokenizer, Example("repeat sun")) == \
        "Copy: repeat red\nred\n\nCopy: repeat blue\nblue\n\nCopy: repeat sun\n"
    assert task.prompt_text(llama_tokenizer, Example("repeat sun")) == "Copy: repeat sun\n"  # the original is unchanged


def test_chat_prompt_gives_each_demonstration_a_turn(llama_tokenizer):
    llama_tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    task = GenerationTask().with_prompt("{source}", TRAIN[:1])
    assert task.prompt_text(llama_tokenizer, Example("repeat sun")) == \
        "<user>repeat red<assistant>red<user>repeat sun<assistant>"


def test_the_prompt_follows_the_methods_chat_template_not_the_trained_format(llama_tokenizer, causal_lm):
    llama_tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                                     "{% if add_generation_prompt %}<assistant>{% endif %}")
    task = GenerationTask(GenerationOptions(chat_template="off"))  # trained methods learn plain text
    candidate = Candidate("{source}")

    def shown(chat_template: str) -> str:
        prompter = GenerationPrompter(causal_lm, llama_tokenizer, task, PromptOptions(chat_template=chat_template),
                                      32, 4, "fp32")
        return prompter.task_for(candidate).prompt_text(llama_tokenizer, Example("repeat sun"))

    assert shown("auto") == "<user>repeat sun<assistant>"
    assert shown("off") == "repeat sun\n"
    assert task.prompt_text(llama_tokenizer, Example("repeat sun")) == "repeat sun\n"


def _method(causal_lm, llama_tokenizer, **options) -> PromptEngineering:
    method = PromptEngineering(PromptOptions(**options))
    task = GenerationTask(GenerationOptions(max_new_tokens=3, chat_template="off"))
    method.attach(GenerationPrompter(causal_lm, llama_tokenizer, task, method.options, 32, 4, "fp32"), [])
    return method


def test_search_scores_every_template_and_shot_count_and_keeps_the_best(causal_lm, llama_tokenizer):
    method = _method(causal_lm, llama_tokenizer, templates=["Say: {text}"], shots=[0, 2])
    method.choose(TRAIN, VALIDATION, GenerationTask(), "perplexity")
    tried = {(r["template"], r["shots"]) for r in method.search}
    assert tried == {("{source}", 0), ("Say: {text}", 0), ("{source}", 2), ("Say: {text}", 2)}
    best = min(r["validation_perplexity"] for r in method.search)
    assert method.search[0]["validation_perplexity"] == best  # best first
    chosen = method.scorer.search_value(method.chosen, VALIDATION, "perplexity")
    assert chosen == pytest.approx(best)
    assert set(method.search[0]) == {"template", "shots", "validation_perplexity"}  # no label-scoring columns


def test_likelihood_metrics_search_without_generating(causal_lm, llama_tokenizer, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("generated while searching by perplexity")
    monkeypatch.setattr(GenerationTask, "generate", refuse)
    _method(causal_lm, llama_tokenizer, shots=[0, 1]).choose(TRAIN, VALIDATION, GenerationTask(), "perplexity")


def test_text_metrics_search_generates(causal_lm, llama_tokenizer):
    method = _method(causal_lm, llama_tokenizer, shots=[0])
    method.choose(TRAIN, VALIDATION, GenerationTask(), "chrf")
    assert method.chosen == Candidate("{source}", shots=0)
    generated, loss = method.outputs(VALIDATION, with_loss=True)
    assert len(generated.texts) == 2 and loss > 0


def test_train_then_reload_gives_the_same_answers_and_metrics(tiny_generation_config, tmp_path):
    cfg = tiny_generation_config("prompt")
    cfg["method"].update({"shots": [0, 1], "templates": ["Echo: {text}"]})
    cfg["train"]["early_stopping"]["metric"] = "perplexity"
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "name=p"]) == 0
    run = tmp_path / "runs" / "p"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"chrf", "bleu", "exact_match", "f1", "perplexity"} <= set(metrics["test"])
    saved = json.loads((run / "model" / "prompt.json").read_text())
    assert len(saved["search"]) == 4 and len(saved["demonstrations"]) == saved["chosen"]["shots"]
    again = evaluate(run)  # reloads the saved prompt (template and demonstrations) and scores the test split
    for name in ("chrf", "exact_match", "perplexity"):
        assert again[name] == pytest.approx(metrics["test"][name], rel=1e-4), name
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert all("prediction" in p and "reference" in p for p in predictions)


def test_an_encoder_cannot_generate(tiny_generation_config, tiny_bert, tmp_path, capsys):
    cfg = tiny_generation_config("prompt")
    cfg["model"] = str(tiny_bert)
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "is an encoder, which does not generate" in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "runs").glob("*"))
