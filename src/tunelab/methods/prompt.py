"""Prompt engineering: no gradient training, a search over prompts on the validation split.

A candidate prompt is a template for the input (task description + `{text}`), a template that
describes each label through its verbalizer words, a number of demonstrations per class, and
whether scores are calibrated. `fit` scores every candidate on the validation split and keeps
the best (ties go to the simpler candidate, so it never picks something worse on validation than
the plain zero-shot prompt). How one candidate scores labels depends on the model family:

- encoders (`EmbeddingScorer`): zero-shot by cosine similarity between the templated input's
  mean-pooled embedding and each label description's; few-shot mixes in class prototypes, the
  mean embedding of k labelled examples per class:  s_c = (1 − w)·cos(x, d_c) + w·cos(x, p_c).
- decoders: label log-likelihood scoring — not yet: see `scorer_for`.

Calibration subtracts each label's mean score over unlabelled training inputs, which removes a
label's blanket advantage (the idea of Zhao et al. 2021, "Calibrate Before Use").
"""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Example
from ..errors import ConfigError, TunelabError
from ..typed import option
from .base import Method
from .registry import register

DEFAULT_TEMPLATES = ["{text}", "Text: {text}", "{description} {text}", "Review: {text}"]
DEFAULT_LABEL_TEMPLATES = ["{label}", "This is {label}.", "It is {label}.", "A {label} text."]


@dataclass
class PromptOptions:
    description: str = option("Classify the text.", "Task description, available to templates as {description}.")
    templates: list[str] = option(doc="Extra input templates with a {text} placeholder, tried with the built-in ones.",
                                  factory=list)
    label_templates: list[str] = option(doc="Extra label descriptions with a {label} placeholder, tried with the "
                                        "built-in ones.", factory=list)
    verbalizers: dict[str, list[str]] = option(doc="Words that describe each label (label → words). Unset: the "
                                               "label's own name.", factory=dict)
    shots: list[int] = option(doc="Demonstrations per class to try (0 = zero-shot).", factory=lambda: [0, 4, 16, 64])
    prototype_weights: list[float] = option(doc="Weights w of the class prototypes to try in few-shot scoring.",
                                            factory=lambda: [0.5, 0.8, 1.0])
    calibrate: list[bool] = option(doc="Whether to try calibrated scores.", factory=lambda: [False, True])
    seed: int = option(0, "Seed of the choice of demonstrations.")


@dataclass(frozen=True)
class Candidate:
    template: str
    label_template: str
    shots: int
    weight: float
    calibrate: bool

    def cost(self) -> tuple:  # simpler first: fewer demonstrations, no calibration, built-in order
        return (self.shots, self.calibrate, self.weight)


def _render(template: str, text: str, description: str) -> str:
    return template.replace("{text}", text).replace("{description}", description)


class EmbeddingScorer:
    """Scores labels by embedding similarity; for encoder models (`AutoModel`)."""

    def __init__(self, model, tokenizer, max_length: int, batch_size: int):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self._cache: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            enc = self.tokenizer(chunk, truncation=True, max_length=self.max_length, padding=True,
                                 return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # mean pooling, as the encoder was trained
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1).numpy()
            self._cache.update(zip(chunk, pooled))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 1))


def scorer_for(family: str, model, tokenizer, max_length: int, batch_size: int):
    if family == "encoder":
        return EmbeddingScorer(model, tokenizer, max_length, batch_size)
    raise ConfigError("method prompt on a decoder model needs label log-likelihood scoring, which tunelab does not "
                      "have yet; use an encoder model (e.g. model: minilm) or a trained method")


@register
class PromptEngineering(Method):
    name = "prompt"
    Options = PromptOptions
    tasks = ("classification",)
    trains = False
    family = "prompt"
    description = "prompt search: templates, label descriptions, demonstrations; no gradient training"

    def attach(self, scorer, labels: list[str]) -> None:
        self.scorer, self.labels = scorer, labels

    # -- what a candidate needs ------------------------------------------------------------
    def _label_vectors(self, label_template: str) -> np.ndarray:
        rows = []
        for label in self.labels:
            words = self.options.verbalizers.get(label) or [label]
            vecs = self.scorer.embed([label_template.replace("{label}", w) for w in words])
            rows.append(vecs.mean(0))
        return _normalise(np.stack(rows))

    def _prototypes(self, template: str, demos: dict[str, list[str]], k: int) -> np.ndarray:
        rows = [self.scorer.embed([_render(template, t, self.options.description) for t in demos[label][:k]]).mean(0)
                for label in self.labels]
        return _normalise(np.stack(rows))

    def _raw_scores(self, c: Candidate, texts: list[str]) -> np.ndarray:
        x = self.scorer.embed([_render(c.template, t, self.options.description) for t in texts])
        scores = x @ self._label_vectors(c.label_template).T
        if c.shots:
            scores = (1 - c.weight) * scores + c.weight * (x @ self._prototypes(c.template, self.demos, c.shots).T)
        return scores

    def _candidate_scores(self, c: Candidate, texts: list[str]) -> np.ndarray:
        scores = self._raw_scores(c, texts)
        return scores - self.bias[c] if c.calibrate else scores

    # -- fit, predict, save, load -----------------------------------------------------------
    def fit(self, train: list[Example], validation: list[Example], task, metric: str) -> None:
        o = self.options
        rng = random.Random(o.seed)
        by_label = {label: [e.text for e in train if e.label == label] for label in self.labels}
        most = max([0] + o.shots)
        self.demos = {label: rng.sample(texts, min(most, len(texts))) for label, texts in by_label.items()}
        # Unlabelled inputs for calibration: never the validation or test split.
        self.calibration_texts = rng.sample([e.text for e in train], min(256, len(train)))
        templates = list(dict.fromkeys(DEFAULT_TEMPLATES + o.templates))
        label_templates = list(dict.fromkeys(DEFAULT_LABEL_TEMPLATES + o.label_templates))
        candidates = []
        for t, lt, k, cal in itertools.product(templates, label_templates, sorted(set(o.shots)), o.calibrate):
            for w in (sorted(set(o.prototype_weights)) if k else [0.0]):
                candidates.append(Candidate(t, lt, k, w, cal))
        self.bias = {}
        texts = [e.text for e in validation]
        self.search: list[dict[str, Any]] = []
        best = None
        for c in candidates:
            if c.calibrate:
                self.bias[c] = self._raw_scores(c, self.calibration_texts).mean(0)
            value = task.metrics(self._candidate_scores(c, texts), validation, self.labels)[metric]
            self.search.append({**asdict(c), f"validation_{metric}": value})
            if best is None or task.better(metric, value, best[0]) or (value == best[0] and c.cost() < best[1].cost()):
                best = (value, c)
        self.chosen = best[1]
        # Best first; among equal scores the simpler candidate first, so the kept one leads its ties.
        sign = 1 if metric in task.lower_is_better else -1
        self.search.sort(key=lambda r: (sign * r[f"validation_{metric}"],
                                        Candidate(**{k: r[k] for k in asdict(c)}).cost()))

    def scores(self, examples: list[Example]) -> np.ndarray:
        return self._candidate_scores(self.chosen, [e.text for e in examples])

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        c = self.chosen
        state = {"method": "prompt", "labels": self.labels, "description": self.options.description,
                 "verbalizers": self.options.verbalizers, "chosen": asdict(c),
                 "demonstrations": {label: texts[:c.shots] for label, texts in self.demos.items()},
                 "calibration_bias": self.bias[c].tolist() if c.calibrate else None,
                 "search": self.search}
        (folder / "prompt.json").write_text(json.dumps(state, indent=2, ensure_ascii=False))

    def load(self, folder: Path, scorer) -> None:
        path = folder / "prompt.json"
        if not path.is_file():
            raise TunelabError(f"{path} not found; is this a run of method prompt?")
        state = json.loads(path.read_text())
        self.options.description = state["description"]
        self.options.verbalizers = state["verbalizers"]
        self.attach(scorer, state["labels"])
        self.chosen = Candidate(**state["chosen"])
        self.demos = state["demonstrations"]
        self.search = state["search"]
        self.bias = {self.chosen: np.array(state["calibration_bias"])} if state["calibration_bias"] else {}


def _normalise(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=-1, keepdims=True).clip(min=1e-12)
