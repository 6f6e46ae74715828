"""Prompt engineering: no gradient training, a search over prompts on the validation split.

A candidate prompt is a template for the input (`{text}`), a template that frames each label's
verbalizer words (`{label}`), a number of demonstrations per class, and whether scores are
calibrated. `fit` scores every candidate on the validation split (or a seeded subset of it) and
keeps the best; ties go to the simpler candidate (fewer demonstrations, then no calibration, then
the earlier, built-in one), so it never picks something worse on the search examples than the
plain zero-shot prompt. Every candidate's score is kept in `search`.

How one candidate scores labels depends on the model family, in two small back-ends:

- encoders, `prompt_encoder.EmbeddingScorer`: cosine similarity of embeddings, with class
  prototypes for few-shot:  s_c = (1 − w)·cos(x, d_c) + w·cos(x, p_c).
- decoders, `prompt_decoder.LikelihoodScorer`: the log-likelihood of each label's verbalizer
  words after the prompt (task description, demonstrations, input), optionally through the
  tokenizer's chat template.

Calibration follows Zhao et al. 2021, "Calibrate Before Use" (https://arxiv.org/abs/2102.09690):
a label's blanket advantage under the prompt is measured on inputs that say nothing about the
label (content-free strings for decoders, unlabelled training inputs for encoders) and removed;
each back-end states its formula.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ..data import Example
from ..errors import TunelabError
from ..typed import non_negative, option, positive
from .base import Method
from .prompt_encoder import DEFAULT_LABEL_TEMPLATES, DEFAULT_TEMPLATES, EmbeddingScorer  # noqa: F401 (estimate)
from .registry import register


def _non_empty(v: list) -> str | None:
    return None if v else "must list at least one"


def _counts(v: list[int] | None) -> str | None:
    return None if v is None or all(k >= 0 for k in v) else "must be zero or more each"


@dataclass
class PromptOptions:
    description: str = option("Classify the text.", "Task description: heads a decoder's prompt; available to "
                              "templates as {description}.")
    templates: list[str] = option(doc="Extra input templates with a {text} placeholder, tried with the built-in ones "
                                  "(for generation: with `generation.template`; {source} works too).", factory=list)
    label_templates: list[str] = option(doc="Extra label templates with a {label} placeholder, tried with the "
                                        "built-in ones. Decoders score the words at {label}; what follows is only "
                                        "shown in demonstrations.", factory=list)
    verbalizers: dict[str, list[str]] = option(doc="Words that describe each label (label → words). Unset: the "
                                               "label's own name. Decoders try both.", factory=dict)
    shots: list[int] | None = option(None, "Demonstrations per class to try (0 = zero-shot; for generation: "
                                     "demonstrations in all). Unset: [0, 4, 16, 64] for encoders (one embedding "
                                     "each), [0, 1] for decoders (each one lengthens every prompt).", _counts)
    prototype_weights: list[float] = option(doc="Encoders: weights w of the class prototypes to try in few-shot "
                                            "scoring.", factory=lambda: [0.5, 0.8, 1.0])
    calibrate: list[bool] = option(doc="Whether to try calibrated scores.", factory=lambda: [False, True])
    calibration: list[Literal["inputs", "content_free"]] = option(
        doc="Decoders: what calibrated scores are divided by, each one tried: `inputs`, each label's mean "
        "probability over unlabelled training inputs (Zhou et al. 2024, \"Batch Calibration\"); `content_free`, its "
        "probability for the content-free inputs \"N/A\", \"\" and \"[MASK]\" (Zhao et al. 2021). Encoders always "
        "calibrate on training inputs.", factory=lambda: ["inputs", "content_free"], check=_non_empty)
    seed: int = option(0, "Seed of the choice of demonstrations and of the search subset.")
    search_examples: int | None = option(None, "Search on a seeded subset of this many validation examples (the "
                                         "chosen prompt is still evaluated on the whole splits). Unset: all.", positive)
    chat_template: Literal["auto", "on", "off"] = option("auto", "Decoders: render the prompt through the "
                                                         "tokenizer's chat template (one user/assistant turn per "
                                                         "demonstration). auto: when the tokenizer has one. For "
                                                         "generation too: `generation.chat_template` is the format "
                                                         "trained methods learn, this one the prompt's.")
    length_normalise: bool = option(True, "Decoders: score a word by its mean token log-probability (true) or "
                                    "the sum (false, which favours short words).")
    demonstrations: Literal["balanced", "random", "nearest"] = option(
        "balanced", "Decoders: how demonstrations are chosen: `balanced` (shots of each class), `random` (shots × "
        "classes from all), `nearest` (the shots × classes training examples most similar to the input).")
    order: Literal["random", "similar_last"] = option("random", "Decoders: demonstration order: seeded `random`, "
                                                      "or `similar_last` (the one most similar to the input last).")
    embedder: str = option("minilm", "Decoders: the model whose mean-pooled embeddings measure similarity for "
                           "`nearest` and `similar_last`: a model alias or encoder folder, or `self` (the decoder's "
                           "own hidden states).")
    demonstration_pool: int = option(1000, "Decoders: demonstrations come from a seeded sample of this many "
                                     "training examples.", non_negative)


@dataclass(frozen=True)
class Candidate:
    template: str
    label_template: str | None = None  # label scoring only (not generation)
    shots: int = 0
    calibrate: bool | None = None  # label scoring only
    weight: float | None = None  # encoders: the prototypes' weight
    verbalizer: str | None = None  # decoders: "label" (the label names) or "words" (the configured verbalizers)
    calibration: str | None = None  # decoders, when calibrated: "inputs" or "content_free"

    def cost(self) -> tuple:  # simpler first: fewer demonstrations, no calibration, built-in order
        return (self.shots, bool(self.calibrate), self.weight or 0.0)

    def row(self) -> dict[str, Any]:
        """The fields that apply to this candidate's back-end (the report's columns)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


class Scorer(Protocol):
    """What the method asks of a back-end (`EmbeddingScorer`, `LikelihoodScorer`) to score labels.

    The generation task's back-end, `prompt_generation.GenerationPrompter`, shares `setup`,
    `candidates`, `state` and `restore`, and generates answers instead of scoring labels.
    """

    default_shots: list[int]  # `shots` when the config leaves it unset
    generates: bool  # False: label scores (this protocol); True: a `GenerationPrompter`
    precision: str  # "fp32" or "bf16" (autocast), for the run's metrics

    def setup(self, train: list[Example], labels: list[str], options: PromptOptions) -> None:
        """Draw what candidates need from the training split (demonstrations, calibration inputs), seeded."""

    def candidates(self) -> list[dict[str, Any]]:
        """Each candidate's `Candidate` fields, in the order ties are broken."""

    def raw_scores(self, c: Candidate, texts: list[str]) -> np.ndarray:
        """[texts, labels] scores under candidate `c`, uncalibrated."""

    def bias(self, c: Candidate) -> np.ndarray:
        """Each label's advantage under `c` on inputs that say nothing about the label."""

    def calibrated(self, raw: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """`raw` scores with the bias removed."""

    def state(self, c: Candidate) -> dict[str, Any]:
        """What prompt.json needs to score as `c` again (its demonstrations, for one)."""

    def restore(self, state: dict[str, Any], labels: list[str], options: PromptOptions) -> None:
        """Score as the saved candidate again."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings (`tunelab recommend` times them to estimate a search)."""


def scorer_for(family: str, model, tokenizer, options: PromptOptions, max_length: int, batch_size: int,
               precision: str = "fp32", task=None) -> Scorer:
    """The back-end of a model family and task (`model` is an `AutoModel` or `AutoModelForCausalLM`)."""
    if task is not None and task.label_kind == "text":
        from .prompt_generation import GenerationPrompter
        return GenerationPrompter(model, tokenizer, task, options, max_length, batch_size, precision)
    if family == "encoder":
        return EmbeddingScorer(model, tokenizer, max_length, batch_size)
    from .prompt_decoder import LikelihoodScorer
    return LikelihoodScorer(model, tokenizer, options, max_length, batch_size, precision)


@register
class PromptEngineering(Method):
    name = "prompt"
    Options = PromptOptions
    tasks = ("classification", "generation")
    trains = False
    family = "prompt"
    description = "prompt search: templates, verbalizers, demonstrations, calibration; no gradient training"

    def attach(self, scorer, labels: list[str]) -> None:
        self.scorer, self.labels = scorer, labels
        if self.options.shots is None:
            # Resolved on a copy: config.yaml keeps "unset" (so `compare` reuses the run for the same config), and
            # prompt.json's options and prompt_search.jsonl record what was searched.
            self.options = replace(self.options, shots=list(scorer.default_shots))

    def _candidate_scores(self, c: Candidate, texts: list[str]) -> np.ndarray:
        scores = self.scorer.raw_scores(c, texts)
        if not c.calibrate:
            return scores
        if c not in self.bias:
            self.bias[c] = self.scorer.bias(c)
        return self.scorer.calibrated(scores, self.bias[c])

    # -- fit, predict, save, load -----------------------------------------------------------
    def fit(self, train: list[Example], validation: list[Example], task, metric: str) -> None:
        o = self.options
        self.scorer.setup(train, self.labels, o)
        searched = validation
        if o.search_examples and o.search_examples < len(validation):
            searched = random.Random(o.seed).sample(validation, o.search_examples)
        texts = [e.text for e in searched]
        self.bias: dict[Candidate, np.ndarray] = {}
        self.search: list[dict[str, Any]] = []
        best = None
        for c in (Candidate(**fields_) for fields_ in self.scorer.candidates()):
            if self.scorer.generates:
                value = self.scorer.search_value(c, searched, metric)
            else:
                value = task.metrics(self._candidate_scores(c, texts), searched, self.labels)[metric]
            self.search.append({**c.row(), f"validation_{metric}": value})
            if best is None or task.better(metric, value, best[0]) or (value == best[0] and c.cost() < best[1].cost()):
                best = (value, c)
        self.chosen = best[1]
        self.search_examples = len(searched)
        # Best first; among equal scores the simpler candidate first, so the kept one leads its ties.
        sign = 1 if metric in task.lower_is_better else -1
        names = {f.name for f in fields(Candidate)}
        self.search.sort(key=lambda r: (sign * r[f"validation_{metric}"],
                                        Candidate(**{k: v for k, v in r.items() if k in names}).cost()))

    def outputs(self, examples: list[Example], with_loss: bool = False) -> tuple[Any, float | None]:
        """What the chosen prompt gives: label scores, or generated answers (and the answers' loss where asked)."""
        if self.scorer.generates:
            return self.scorer.outputs(self.chosen, examples, with_loss)
        return self._candidate_scores(self.chosen, [e.text for e in examples]), None

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        c = self.chosen
        state = {"method": "prompt", "labels": self.labels, "description": self.options.description,
                 "verbalizers": self.options.verbalizers, "options": asdict(self.options), "chosen": c.row(),
                 **self.scorer.state(c),
                 "calibration_bias": self.bias[c].tolist() if c.calibrate else None,
                 "search_examples": self.search_examples, "search": self.search}
        (folder / "prompt.json").write_text(json.dumps(state, indent=2, ensure_ascii=False))

    def load(self, folder: Path, scorer) -> None:
        path = folder / "prompt.json"
        if not path.is_file():
            raise TunelabError(f"{path} not found; is this a run of method prompt?")
        state = json.loads(path.read_text())
        # The saved options win over the config's: the run predicts as it did when it was fitted.
        saved = {**state.get("options", {}), "description": state["description"],
                 "verbalizers": state["verbalizers"]}
        for key, value in saved.items():
            setattr(self.options, key, value)
        self.attach(scorer, state["labels"])
        self.chosen = Candidate(**state["chosen"])
        scorer.restore(state, self.labels, self.options)
        self.search = state["search"]
        self.search_examples = state.get("search_examples")
        self.bias = {self.chosen: np.array(state["calibration_bias"])} if state["calibration_bias"] else {}
