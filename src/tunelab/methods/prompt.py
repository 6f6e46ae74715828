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
import re
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from .. import models
from ..data import Example, Splits
from ..errors import ConfigError, TunelabError
from ..training.precision import device, resolve
from ..typed import non_negative, option, positive
from .base import Method, Run, count_parameters
from .prompt_search import CALIBRATION_INPUTS, Candidate
from .prompt_decoder import LikelihoodScorer
from .prompt_encoder import DEFAULT_LABEL_TEMPLATES, DEFAULT_TEMPLATES, EmbeddingScorer
from .prompt_generation import GenerationPrompter
from .registry import register


def _non_empty(v: list) -> str | None:
    return None if v else "must list at least one"


def _counts(v: list[int] | None) -> str | None:
    return None if v is None or all(k >= 0 for k in v) else "must be zero or more each"


def _input_templates(templates: list[str]) -> str | None:
    """Templates are filled by replacing their placeholders: a misspelt one would stay in the prompt as it is, and
    one without {text} would never show the input."""
    for template in templates:
        names = set(re.findall(r"\{(\w+)\}", template))
        unknown = sorted(names - {"text", "source", "description"})
        if unknown:
            return (f"name {{{unknown[0]}}} in {template!r}, which is not a placeholder; use {{text}} (or {{source}}) "
                    f"and {{description}}")
        if not names & {"text", "source"}:
            return f"need {{text}} where the input goes, which {template!r} lacks"
    return None


def _label_templates(templates: list[str]) -> str | None:
    missing = [t for t in templates if "{label}" not in t]
    return f"need {{label}} where the label's words go, which {missing[0]!r} lacks" if missing else None


@dataclass
class PromptOptions:
    description: str = option("Classify the text.", "Task description: heads a decoder's prompt; available to "
                              "templates as {description}.")
    templates: list[str] = option(doc="Extra input templates with a {text} placeholder, tried with the built-in ones "
                                  "(for generation: with `generation.template`; {source} works too).",
                                  check=_input_templates, factory=list)
    label_templates: list[str] = option(doc="Extra label templates with a {label} placeholder, tried with the "
                                        "built-in ones. Decoders score the words at {label}; what follows is only "
                                        "shown in demonstrations.", check=_label_templates, factory=list)
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


class LabelScorer(Protocol):
    """What a label back-end (`EmbeddingScorer`, `LikelihoodScorer`) does: score every label under a candidate."""

    default_shots: list[int]  # `shots` when the config leaves it unset
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
        """Unit-length embeddings (`tunelab estimate` times them)."""


class Prompter(Protocol):
    """What the method asks of its back-end, for labels (`LabelPrompter`) and for open answers
    (`prompt_generation.GenerationPrompter`) alike."""

    default_shots: list[int]
    precision: str

    def setup(self, train: list[Example], labels: list[str], options: PromptOptions) -> None: ...

    def candidates(self) -> list[dict[str, Any]]: ...

    def search_value(self, c: Candidate, examples: list[Example], metric: str) -> float:
        """Candidate `c`'s `metric` on `examples`."""

    def outputs(self, c: Candidate, examples: list[Example], with_loss: bool) -> tuple[Any, float | None]:
        """The task's outputs under `c` (label scores, or answers) and the answers' loss where asked."""

    def state(self, c: Candidate) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any], labels: list[str], options: PromptOptions) -> None: ...

    def search_seconds(self, splits: Splits, options: PromptOptions, metric: str) -> float:
        """What the search and the chosen prompt's predictions will take, timed on a sample."""


class LabelPrompter:
    """A label back-end as a `Prompter`: a candidate's scores, calibrated where the candidate says so (each
    candidate's bias measured once), and its metric on the search examples."""

    def __init__(self, scorer: LabelScorer, task):
        self.scorer, self.task = scorer, task
        self.default_shots, self.precision = scorer.default_shots, scorer.precision
        self.labels: list[str] = []
        self.bias: dict[Candidate, np.ndarray] = {}

    def setup(self, train: list[Example], labels: list[str], options: PromptOptions) -> None:
        self.labels, self.bias = labels, {}
        self.scorer.setup(train, labels, options)

    def candidates(self) -> list[dict[str, Any]]:
        return self.scorer.candidates()

    def scores(self, c: Candidate, texts: list[str]) -> np.ndarray:
        scores = self.scorer.raw_scores(c, texts)
        if not c.calibrate:
            return scores
        if c not in self.bias:
            self.bias[c] = self.scorer.bias(c)
        return self.scorer.calibrated(scores, self.bias[c])

    def search_value(self, c: Candidate, examples: list[Example], metric: str) -> float:
        return self.task.metrics(self.scores(c, [e.text for e in examples]), examples, self.labels)[metric]

    def outputs(self, c: Candidate, examples: list[Example], with_loss: bool) -> tuple[np.ndarray, None]:
        return self.scores(c, [e.text for e in examples]), None

    def state(self, c: Candidate) -> dict[str, Any]:
        return {**self.scorer.state(c), "calibration_bias": self.bias[c].tolist() if c.calibrate else None}

    def restore(self, state: dict[str, Any], labels: list[str], options: PromptOptions) -> None:
        self.labels = labels
        self.scorer.restore(state, labels, options)
        chosen = Candidate(**state["chosen"])
        self.bias = {chosen: np.array(state["calibration_bias"])} if state.get("calibration_bias") else {}

    def search_seconds(self, splits: Splits, options: PromptOptions, metric: str) -> float:
        """Embedding (or scoring) every candidate input once: the search examples and calibration inputs under
        each template, the demonstrations, and the label descriptions; timed on a sample."""
        templates = len(set(DEFAULT_TEMPLATES + options.templates))
        sample = [e.text for e in splits.validation[:64]]
        start = time.perf_counter()
        self.scorer.embed(sample)
        per_text = (time.perf_counter() - start) / len(sample)
        n_labels = len(splits.labels)
        texts = templates * (len(splits.validation) + min(CALIBRATION_INPUTS, len(splits.train))
                             + max(options.shots or [0]) * n_labels)
        texts += len(set(DEFAULT_LABEL_TEMPLATES + options.label_templates)) * n_labels * 3
        return texts * per_text


def scorer_for(family: str, model, tokenizer, options: PromptOptions, max_length: int, batch_size: int,
               precision: str = "fp32", task=None) -> Prompter:
    """The back-end of a model family and task (`model` is an `AutoModel` or `AutoModelForCausalLM`)."""
    if task is not None and task.label_kind == "text":
        return GenerationPrompter(model, tokenizer, task, options, max_length, batch_size, precision)
    if family == "encoder":
        return LabelPrompter(EmbeddingScorer(model, tokenizer, max_length, batch_size), task)
    return LabelPrompter(LikelihoodScorer(model, tokenizer, options, max_length, batch_size, precision), task)


@register
class PromptEngineering(Method):
    name = "prompt"
    Options = PromptOptions
    tasks = ("classification", "generation")
    family = "prompt"
    seeded = False  # deterministic: `compare --seeds` runs it once
    description = "prompt search: templates, verbalizers, demonstrations, calibration; no gradient training"

    def setup(self, run: Run) -> None:
        """Load the model the prompt scores with (the bare encoder, or a decoder with its language-model head)
        and attach the back-end of its family and the task."""
        from transformers import AutoModel, AutoModelForCausalLM
        self.run = run
        cfg, task, family = run.cfg, run.task, models.family(run.folder)
        if family == "encoder" and task.label_kind == "text":
            raise ConfigError(f"method prompt generates answers for task generation, and {cfg.model} is an "
                              f"encoder, which does not generate; use a decoder model such as smollm2-135m")
        if family == "encoder":
            model, _ = models.load_model(AutoModel, run.folder, allow_unsafe=cfg.allow_unsafe_weights)
            precision = "fp32"
        else:
            # A folder without a language-model head (a bare `AutoModel` save) gets a random one: seed it, so that
            # a reload scores exactly as the run did.
            torch.manual_seed(cfg.train.seed)
            model, _ = models.load_model(AutoModelForCausalLM, run.folder, allow_unsafe=cfg.allow_unsafe_weights)
            model.to(device())
            precision = resolve(cfg.train.precision, device())
        models.check_tokenizer(run.tokenizer, model, run.folder)
        task.bind(model)
        self.model = model.eval()
        self.attach(scorer_for(family, model, run.tokenizer, self.options, cfg.data.max_length,
                               cfg.train.eval_batch_size, precision, task), run.labels)

    def attach(self, scorer: Prompter, labels: list[str]) -> None:
        self.scorer, self.labels, self.precision = scorer, labels, scorer.precision
        if self.options.shots is None:
            # Resolved on a copy: config.yaml keeps "unset" (so `compare` reuses the run for the same config), and
            # prompt.json's options and prompt_search.jsonl record what was searched.
            self.options = replace(self.options, shots=list(scorer.default_shots))

    # -- fit, predict, save, load -----------------------------------------------------------
    def fit(self, splits: Splits, log, **_: Any) -> None:
        """Choose the prompt on the validation split (training hooks do not apply: nothing trains)."""
        task = self.run.task
        self.choose(splits.train, splits.validation, task, self.run.cfg.train.early_stopping.metric
                    or task.default_metric)
        log(f"prompt search: {len(self.search)} candidates on {self.search_examples} validation examples; "
            "chose " + ", ".join(f"{k} {v!r}" for k, v in self.chosen.row().items()))
        return None

    def choose(self, train: list[Example], validation: list[Example], task, metric: str) -> None:
        """Score every candidate on the validation split (or a seeded subset of it) and keep the best."""
        o = self.options
        self.scorer.setup(train, self.labels, o)
        searched = validation
        if o.search_examples and o.search_examples < len(validation):
            searched = random.Random(o.seed).sample(validation, o.search_examples)
        self.search: list[dict[str, Any]] = []
        best = None
        for c in (Candidate(**fields_) for fields_ in self.scorer.candidates()):
            value = self.scorer.search_value(c, searched, metric)
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
        return self.scorer.outputs(self.chosen, examples, with_loss)

    def parameters(self) -> dict[str, int]:
        return {**count_parameters(self.model), "trainable": 0}  # the model scores; nothing of it trains

    def run_files(self) -> dict[str, list[dict[str, Any]]]:
        return {"prompt_search.jsonl": self.search}

    def estimate(self, splits: Splits, load_seconds: float) -> dict[str, Any]:
        metric = self.run.cfg.train.early_stopping.metric or self.run.task.default_metric
        seconds = self.scorer.search_seconds(splits, self.options, metric)
        return {"fit_seconds": round(load_seconds + seconds, 1), "trainable": 0,
                "total": self.parameters()["total"], "load_seconds": round(load_seconds, 2)}

    def save(self, folder: Path | None) -> None:
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prompt.json").write_text(json.dumps(self.saved_state(), indent=2, ensure_ascii=False))

    def saved_state(self) -> dict[str, Any]:
        """What prompt.json holds: the chosen candidate and all it scores with, and the search."""
        c = self.chosen
        state = {"method": "prompt", "labels": self.labels, "description": self.options.description,
                 "verbalizers": self.options.verbalizers, "options": asdict(self.options), "chosen": c.row(),
                 **self.scorer.state(c), "search_examples": self.search_examples, "search": self.search}
        state.setdefault("calibration_bias", None)
        return state

    def load(self, run: Run, folder: Path) -> None:
        path = folder / "prompt.json"
        if not path.is_file():
            raise TunelabError(f"{path} not found; is this a run of method prompt?")
        self.setup(run)
        state = json.loads(path.read_text())
        # The saved options win over the config's: the run predicts as it did when it was fitted.
        saved = {**state.get("options", {}), "description": state["description"],
                 "verbalizers": state["verbalizers"]}
        for key, value in saved.items():
            setattr(self.options, key, value)
        self.attach(self.scorer, state["labels"])
        self.chosen = Candidate(**state["chosen"])
        self.scorer.restore(state, self.labels, self.options)
        self.search = state["search"]
        self.search_examples = state.get("search_examples")
