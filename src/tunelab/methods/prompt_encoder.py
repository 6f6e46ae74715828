"""Prompt scoring for encoder models (`AutoModel`): embedding similarity, no generation.

Zero-shot, a label c scores by the cosine similarity between the templated input's mean-pooled
embedding x and the mean embedding d_c of the label's descriptions (the label template filled with
each verbalizer word). Few-shot mixes in class prototypes p_c, the mean embedding of k labelled
training examples of class c:

    s_c(x) = (1 − w)·cos(x, d_c) + w·cos(x, p_c)

Calibration subtracts each label's mean score over unlabelled training inputs, which removes a
label's blanket advantage (the idea of Zhao et al. 2021, "Calibrate Before Use",
https://arxiv.org/abs/2102.09690, in the additive form that suits similarities).
"""
from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np
import torch

from ..data import Example
from .prompt_search import CALIBRATION_INPUTS

DEFAULT_TEMPLATES = ["{text}", "Text: {text}", "{description} {text}", "Review: {text}"]
DEFAULT_LABEL_TEMPLATES = ["{label}", "This is {label}.", "It is {label}.", "A {label} text."]
DEFAULT_SHOTS = [0, 4, 16, 64]  # prototypes are one embedding per example, so many shots stay cheap


class EmbeddingScorer:
    """Scores labels by embedding similarity."""

    default_shots = DEFAULT_SHOTS
    precision = "fp32"

    def __init__(self, model, tokenizer, max_length: int, batch_size: int):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self._cache: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            # Batches of texts of about one length pad little: the search embeds each template's inputs, and
            # in the order given, a batch was padded to its longest review, a third of the tokens or more.
            ids = self.tokenizer(missing, truncation=True, max_length=self.max_length)["input_ids"]
            order = sorted(range(len(missing)), key=lambda i: len(ids[i]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                enc = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]},
                                         return_tensors="pt").to(self.model.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # mean pooling, as the encoder was trained
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
                self._cache.update(zip((missing[i] for i in chunk), pooled))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 1))

    # -- what the shared method asks of a back-end ---------------------------------------------
    def setup(self, train: list[Example], labels: list[str], options) -> None:
        """Draw the demonstrations and the calibration inputs from the training split (seeded)."""
        self.labels, self.options = labels, options
        rng = random.Random(options.seed)
        by_label = {label: [e.text for e in train if e.label == label] for label in labels}
        most = max([0] + options.shots)
        self.demos = {label: rng.sample(texts, min(most, len(texts))) for label, texts in by_label.items()}
        # Unlabelled inputs for calibration: never the validation or test split.
        self.calibration_texts = rng.sample([e.text for e in train], min(CALIBRATION_INPUTS, len(train)))

    def candidates(self) -> list[dict[str, Any]]:
        """The fields of every candidate, in the order ties are broken (built-ins first)."""
        o = self.options
        templates = list(dict.fromkeys(DEFAULT_TEMPLATES + o.templates))
        label_templates = list(dict.fromkeys(DEFAULT_LABEL_TEMPLATES + o.label_templates))
        out = []
        for t, lt, k, cal in itertools.product(templates, label_templates, sorted(set(o.shots)), o.calibrate):
            for w in (sorted(set(o.prototype_weights)) if k else [0.0]):
                out.append(dict(template=t, label_template=lt, shots=k, weight=w, calibrate=cal))
        return out

    def raw_scores(self, c, texts: list[str]) -> np.ndarray:
        x = self.embed([_render(c.template, t, self.options.description) for t in texts])
        scores = x @ self._label_vectors(c.label_template).T
        if c.shots:
            scores = (1 - c.weight) * scores + c.weight * (x @ self._prototypes(c.template, c.shots).T)
        return scores

    def bias(self, c) -> np.ndarray:
        return self.raw_scores(c, self.calibration_texts).mean(0)

    @staticmethod
    def calibrated(raw: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return raw - bias

    def state(self, c) -> dict[str, Any]:
        return {"demonstrations": {label: texts[:c.shots] for label, texts in self.demos.items()}}

    def restore(self, state: dict[str, Any], labels: list[str], options) -> None:
        self.labels, self.options = labels, options
        self.demos = state["demonstrations"]

    # -- helpers --------------------------------------------------------------------------------
    def _label_vectors(self, label_template: str) -> np.ndarray:
        rows = []
        for label in self.labels:
            words = self.options.verbalizers.get(label) or [label]
            vecs = self.embed([label_template.replace("{label}", w) for w in words])
            rows.append(vecs.mean(0))
        return _normalise(np.stack(rows))

    def _prototypes(self, template: str, k: int) -> np.ndarray:
        rows = [self.embed([_render(template, t, self.options.description) for t in self.demos[label][:k]]).mean(0)
                for label in self.labels]
        return _normalise(np.stack(rows))


def _render(template: str, text: str, description: str) -> str:
    return template.replace("{text}", text).replace("{description}", description)


def _normalise(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=-1, keepdims=True).clip(min=1e-12)
