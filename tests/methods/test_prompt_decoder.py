"""Label log-likelihood scoring on a tiny Llama: the formula, the cache, calibration, chat templates, demonstrations."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tunelab import models
from tunelab.api import train
from tunelab.settings import load_config
from tunelab.data import Example, load_splits
from tunelab.errors import ConfigError
from tunelab.methods.prompt import Candidate, PromptOptions
from tunelab.methods.prompt_decoder import CONTENT_FREE, LikelihoodScorer
from tunelab.pipeline import reload
from tunelab.tasks import TASKS

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def _scorer(folder: Path, **options) -> LikelihoodScorer:
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    opts = PromptOptions(**{"shots": [0], **options})
    return LikelihoodScorer(model, models.load_tokenizer(folder), opts, max_length=16, batch_size=3)


def _examples(n: int = 12) -> list[Example]:
    from conftest import tiny_sentences
    return [Example(text, label) for text, label in tiny_sentences(n)]


@pytest.fixture(scope="module")
def chat_llama(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama, its tokenizer given a chat template."""
    folder = tmp_path_factory.mktemp("chat-llama")
    shutil.copytree(tiny_llama, folder, dirs_exist_ok=True)
    tokenizer = models.load_tokenizer(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def test_cached_batched_scores_equal_one_plain_forward_per_prompt(tiny_llama):
    # "superbness" is several word pieces: it takes the prompt + word rows, "good" the prompt's own row.
    scorer = _scorer(tiny_llama, verbalizers={"positive": ["good", "superbness"], "negative": ["bad"]})
    scorer.setup(_examples(), ["negative", "positive"], scorer.options)
    tok = scorer.tokenizer
    assert len(tok(" superbness", add_special_tokens=False).input_ids) > 1
    prompts = ["Classify the text.\n\nthe film was good\nAnswer:", "Classify the text.\n\nbad\nAnswer:",
               "Classify the text.\n\na plot, really quite dull and weak\nAnswer:"]
    got = scorer._logliks(prompts, " ")
    for p, row in zip(prompts, got):
        for w, value in zip(scorer.words, row):
            prompt_ids = tok(p, add_special_tokens=False).input_ids
            word_ids = tok(" " + w, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = scorer.model(torch.tensor([prompt_ids + word_ids])).logits[0].log_softmax(-1)
            expected = sum(logp[len(prompt_ids) - 1 + t, i].item() for t, i in enumerate(word_ids))
            assert value == pytest.approx(expected, abs=1e-4), (p, w)


def test_label_score_is_logsumexp_of_length_normalised_words(tiny_llama):
    scorer = _scorer(tiny_llama, verbalizers={"positive": ["good", "superbness"], "negative": ["bad"]})
    scorer.setup(_examples(), ["negative", "positive"], scorer.options)
    c = Candidate("{text}", "Answer: {label}", 0, False, verbalizer="words")
    raw = scorer.raw_scores(c, ["the film was good"])[0]
    ll = scorer._logliks([scorer.render(c, "the film was good")], " ")[0]
    n = {w: len(scorer.tokenizer(" " + w, add_special_tokens=False).input_ids) for w in scorer.words}
    mean = {w: ll[i] / n[w] for i, w in enumerate(scorer.words)}
    assert raw[0] == pytest.approx(mean["bad"])
    assert raw[1] == pytest.approx(np.logaddexp(mean["good"], mean["superbness"]))
    scorer.options.length_normalise = False
    assert scorer.raw_scores(c, ["the film was good"])[0][1] == pytest.approx(
        np.logaddexp(ll[scorer.word_index["good"]], ll[scorer.word_index["superbness"]]))


def test_calibration_divides_by_the_content_free_probabilities(tiny_llama):
    # By hand: p(·|x) = (0.7, 0.3) and p_cf = (0.8, 0.2) give p/p_cf = (0.875, 1.5): the second label wins.
    raw = np.log([[0.7, 0.3]]) + 5.0  # label scores are log-likelihoods up to a per-input constant
    calibrated = LikelihoodScorer.calibrated(raw, np.log([0.8, 0.2]))
    np.testing.assert_allclose(calibrated, np.log([[0.875, 1.5]]), atol=1e-12)
    assert calibrated.argmax() == 1 and raw.argmax() == 0

    # p_cf is the mean of the content-free inputs' label probabilities, normalised over the labels.
    scorer = _scorer(tiny_llama)
    scorer.setup(_examples(), ["negative", "positive"], scorer.options)
    cf = {"N/A": [0.9, 0.1], "": [0.6, 0.4], "[MASK]": [0.9, 0.1]}
    scorer.raw_scores = lambda c, texts: np.log([cf[t] for t in texts]) - 3.0
    assert list(cf) == CONTENT_FREE
    content_free = Candidate("{text}", "Answer: {label}", 0, True, verbalizer="label", calibration="content_free")
    np.testing.assert_allclose(scorer.bias(content_free), np.log([0.8, 0.2]), atol=1e-12)


def test_input_calibration_divides_by_the_mean_probabilities_over_training_inputs(tiny_llama):
    scorer = _scorer(tiny_llama)
    train = _examples(12)
    scorer.setup(train, ["negative", "positive"], scorer.options)
    # Unlabelled training inputs, seeded: never validation or test ones.
    assert len(scorer.calibration_texts) == 12 and set(scorer.calibration_texts) <= {e.text for e in train}
    probs = {t: [0.9, 0.1] if i % 2 else [0.5, 0.5] for i, t in enumerate(scorer.calibration_texts)}
    scorer.raw_scores = lambda c, texts: np.log([probs[t] for t in texts]) + 2.0
    inputs = Candidate("{text}", "Answer: {label}", 0, True, verbalizer="label", calibration="inputs")
    np.testing.assert_allclose(scorer.bias(inputs), np.log([0.7, 0.3]), atol=1e-12)


def test_the_search_tries_each_calibration_once_and_uncalibrated_once(tiny_llama):
    scorer = _scorer(tiny_llama, calibrate=[False, True], calibration=["inputs", "content_free", "inputs"])
    scorer.setup(_examples(), ["negative", "positive"], scorer.options)
    kinds = [(c["calibrate"], c.get("calibration")) for c in scorer.candidates()]
    # One template, one label template, zero-shot, label names: one candidate per calibration choice.
    assert kinds == [(False, None), (True, "inputs"), (True, "content_free")]
    scorer.options.calibrate = [True]
    assert {c.get("calibration") for c in scorer.candidates()} == {"inputs", "content_free"}


def test_chat_template_on_and_off_both_render_and_score(chat_llama, tiny_llama):
    c = Candidate("Review: {text}", "Sentiment: {label}.", 1, False, verbalizer="label")
    rendered = {}
    for mode in ("on", "off"):
        scorer = _scorer(chat_llama, chat_template=mode, shots=[1], description="Is it positive or negative?")
        scorer.setup(_examples(), ["negative", "positive"], scorer.options)
        rendered[mode] = scorer.render(c, "a great film")
        scores = scorer.raw_scores(c, ["a great film", "a dull film"])
        assert scores.shape == (2, 2) and np.isfinite(scores).all()
    demo, demo_label = scorer.demos.choose(1, "")[0]  # the same seeded demonstrations in both modes
    assert rendered["on"].startswith(f"<user>Is it positive or negative?\n\nReview: {demo}</user>\n"
                                     f"<assistant>Sentiment: {demo_label}.</assistant>\n")
    assert rendered["on"].endswith("<user>Review: a great film</user>\n<assistant>Sentiment:")
    assert "<user>" not in rendered["off"]
    assert rendered["off"].startswith("Is it positive or negative?\n\nReview: ")
    assert f"Review: {demo}\nSentiment: {demo_label}.\n\n" in rendered["off"]
    assert rendered["off"].endswith("\n\nReview: a great film\nSentiment:")
    assert _scorer(chat_llama).chat is True  # auto: the tokenizer has a template
    assert _scorer(tiny_llama).chat is False      # auto: this one has none
    with pytest.raises(ConfigError, match="chat_template"):
        _scorer(tiny_llama, chat_template="on")


def test_demonstrations_answer_with_the_words_that_are_scored(tiny_llama):
    scorer = _scorer(tiny_llama, shots=[1], verbalizers={"negative": ["bad", "dull"], "positive": ["good"]})
    scorer.setup(_examples(), ["negative", "positive"], scorer.options)
    for verbalizer, answers in (("words", {"Answer: bad", "Answer: good"}),
                                ("label", {"Answer: negative", "Answer: positive"})):
        prompt = scorer.render(Candidate("{text}", "Answer: {label}", 1, False, verbalizer=verbalizer), "x")
        assert {line for line in prompt.splitlines() if line.startswith("Answer: ")} == answers


def test_nearest_by_the_decoders_own_embeddings(tiny_llama):
    scorer = _scorer(tiny_llama, demonstrations="nearest", order="similar_last", embedder="self", shots=[1])
    scorer.setup(_examples(40), ["negative", "positive"], scorer.options)
    vectors = scorer.embed(["a good film", "a really long and very bad film indeed"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(scorer.embed(["a good film"])[0], vectors[0], atol=1e-5)  # padding changes nothing
    text = scorer.demos.pool[5][0]
    demos = scorer.demos.choose(1, text)
    assert len(demos) == 2 and demos[-1] == scorer.demos.pool[5]  # an input is most similar to itself: last


@pytest.mark.parametrize("options", [
    {"shots": [1], "calibrate": [True], "chat_template": "on"},
    {"shots": [1], "demonstrations": "nearest", "embedder": "self", "verbalizers": {"positive": ["good", "fine"]}},
])
def test_train_then_reload_gives_identical_scores(options, tiny_config, chat_llama):
    cfg = tiny_config("prompt", chat_llama)
    cfg["method"].update(options)
    metrics = train(cfg, log=lambda _: None)
    folder = Path(metrics["run_folder"])
    saved = [json.loads(line) for line in open(folder / "predictions.jsonl")]
    state = json.loads((folder / "model" / "prompt.json").read_text())
    assert state["chosen"]["shots"] == 1 and "{text}" in state["prompt_example"]
    loaded = load_config(cfg)
    splits = load_splits(loaded.data, TASKS.get("classification"))
    adapted = reload(loaded, folder, splits.labels)
    scores, _ = adapted.scores(splits.test)
    expected = np.array([[row["scores"][label] for label in splits.labels] for row in saved])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
