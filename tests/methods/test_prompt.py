"""The prompt method shared by both back-ends: the search, its subset, and what a run saves."""
from __future__ import annotations

import json

import pytest

from tunelab.api import train
from tunelab.settings import load_config
from tunelab.methods import prompt_decoder as decoder
from tunelab.methods import prompt_encoder as encoder
from tunelab.tasks import TASKS


def _plain_zero_shot(search: list[dict], metric: str) -> float:
    """The best score of the first built-in template and label template, zero-shot, uncalibrated."""
    firsts = {(encoder.DEFAULT_TEMPLATES[0], encoder.DEFAULT_LABEL_TEMPLATES[0]),
              (decoder.DEFAULT_TEMPLATES[0], decoder.DEFAULT_LABEL_TEMPLATES[0])}
    plain = [r[f"validation_{metric}"] for r in search
             if not r["shots"] and not r["calibrate"] and (r["template"], r["label_template"]) in firsts]
    assert plain, "the plain zero-shot prompt was not among the candidates"
    return max(plain)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_search_never_picks_worse_than_plain_zero_shot(family, tiny_config, request):
    model = request.getfixturevalue(f"tiny_{family}")
    cfg = tiny_config("prompt", model)
    cfg["method"].update(shots=[0, 2], verbalizers={"positive": ["good"], "negative": ["bad"]})
    metrics = train(cfg, log=lambda _: None)
    folder = metrics["run_folder"]
    search = [json.loads(line) for line in open(f"{folder}/prompt_search.jsonl")]
    saved = json.load(open(f"{folder}/model/prompt.json"))
    chosen = next(r for r in search if all(r[k] == v for k, v in saved["chosen"].items()))
    # The search ran on the whole validation split, so the kept prompt's score is the run's validation score.
    assert metrics["validation"]["f1"] == pytest.approx(chosen["validation_f1"])
    assert chosen["validation_f1"] >= _plain_zero_shot(search, "f1")
    assert chosen["validation_f1"] == max(r["validation_f1"] for r in search)
    # Ties go to the simpler candidate: nothing as good has fewer demonstrations or skips calibration.
    ties = [r for r in search if r["validation_f1"] == chosen["validation_f1"]]
    assert (chosen["shots"], chosen["calibrate"]) == min((r["shots"], r["calibrate"]) for r in ties)
    assert {"template", "label_template", "shots", "calibrate"} <= set(search[0])
    assert saved["search_examples"] == metrics["splits"]["validation"]


def test_search_examples_takes_a_seeded_subset(tiny_config, tiny_llama):
    cfg = tiny_config("prompt", tiny_llama)
    cfg["method"].update(shots=[0], search_examples=10)
    first = train(cfg, log=lambda _: None)
    again = train({**cfg, "name": "again"}, log=lambda _: None)
    saved = json.load(open(f"{first['run_folder']}/model/prompt.json"))
    assert saved["search_examples"] == 10
    search = [json.loads(line) for line in open(f"{first['run_folder']}/prompt_search.jsonl")]
    assert search == [json.loads(line) for line in open(f"{again['run_folder']}/prompt_search.jsonl")]
    # The runner still evaluates the kept prompt on every validation example.
    assert sum(c["support"] for c in first["validation"]["per_class"].values()) == first["splits"]["validation"]


def test_shots_default_depends_on_the_family(tiny_config, tiny_bert, tiny_llama):
    from tunelab.data import load_splits
    from tunelab.pipeline import prepare
    for model, expected in ((tiny_bert, [0, 4, 16, 64]), (tiny_llama, [0, 1])):
        cfg = load_config(tiny_config("prompt", model))
        adapted = prepare(cfg, load_splits(cfg.data, TASKS.get("classification")), log=lambda _: None)
        assert adapted.method.options.shots == expected


def test_negative_shots_are_a_config_error(tiny_config):
    from tunelab.errors import ConfigError
    cfg = tiny_config("prompt")
    cfg["method"]["shots"] = [0, -1]
    with pytest.raises(ConfigError, match="method.shots"):
        load_config(cfg)


def test_encoder_embeds_in_batches_of_like_length_and_returns_the_given_order(tiny_bert):
    import numpy as np
    import torch
    from transformers import AutoModel

    from tunelab import models
    tokenizer = models.load_tokenizer(str(tiny_bert))
    model = AutoModel.from_pretrained(tiny_bert)
    texts = [" ".join(["word"] * n) for n in (9, 1, 6, 2, 8, 3, 7, 4)] + ["word"]  # a repeat: embedded once
    widths = []
    model.register_forward_hook(lambda module, args, kwargs, out: widths.append(kwargs["input_ids"].shape),
                                with_kwargs=True)
    scorer = encoder.EmbeddingScorer(model, tokenizer, max_length=16, batch_size=3)
    got = scorer.embed(texts)
    assert [w[0] for w in widths] == [3, 3, 2]  # 8 distinct texts in batches of 3
    assert [w[1] for w in widths] == sorted(w[1] for w in widths) and widths[0][1] < widths[-1][1]
    with torch.no_grad():  # each text alone, unpadded: the same mean-pooled, normalised embedding
        alone = [model(**tokenizer(t, return_tensors="pt")).last_hidden_state.mean(1)[0] for t in texts]
    alone = np.stack([torch.nn.functional.normalize(a, dim=-1).numpy() for a in alone])
    np.testing.assert_allclose(got, alone, atol=1e-5)
