"""Prompt engineering for open answers (the `generation` task: QA, chat, translation): a decoder
answers zero-shot or after a few solved examples.

A candidate is an input template (`generation.template` first, then the method's `templates`) and
a number of demonstrations: training examples shown before the input, each as a user turn and the
assistant's answer (or, without a chat template, as prompt + answer paragraphs). The
demonstrations are a seeded draw from the training split, the same for every input, so the
candidates differ only in what they search.

`fit` scores every candidate on the validation search examples with the run's metric: chrF, BLEU,
exact match or F1 by generating answers; perplexity and loss from the reference answers'
likelihood alone, which needs no generation (one forward pass instead of max_new_tokens).
"""
from __future__ import annotations

import random
import time
from typing import Any

from ..data import Example, Splits
from ..tasks.generation import Generated, GenerationTask
from ..tasks.text_metrics import perplexity
from ..training.precision import device
from .prompt_search import Candidate

# Demonstrations in all (not per class: open answers have no classes). Each lengthens every prompt, and one
# is what shows a small model the answer's form (a translation, not a comment on the text).
DEFAULT_SHOTS = [0, 1]
LIKELIHOOD_METRICS = ("loss", "perplexity")


class GenerationPrompter:
    """The prompt method's back-end for the generation task (a `prompt.Prompter`)."""

    default_shots = DEFAULT_SHOTS

    def __init__(self, model, tokenizer, task: GenerationTask, options, max_length: int, batch_size: int,
                 precision: str):
        self.model, self.tokenizer, self.task, self.options = model.eval(), tokenizer, task, options
        self.max_length, self.batch_size, self.precision = max_length, batch_size, precision
        self.demos: list[Example] = []

    def setup(self, train: list[Example], labels: list[str], options) -> None:
        """Draw the demonstrations every candidate shows (its first `shots` of them), seeded."""
        self.options = options
        most = max(options.shots or [0])
        self.demos = random.Random(options.seed).sample(train, min(most, len(train)))

    def candidates(self) -> list[dict[str, Any]]:
        """Fewer demonstrations first, then the configured template first: the order ties are broken in."""
        templates = list(dict.fromkeys([self.task.options.template] + list(self.options.templates)))
        return [{"template": t, "shots": k} for k in sorted(set(self.options.shots or [0])) for t in templates]

    def task_for(self, c) -> GenerationTask:
        # The method's own `chat_template`, not `generation.chat_template`: that one is the format trained methods
        # learn (plain text trains faster), while an untrained instruct model answers best in its chat format
        # (SmolLM2, en→fr zero-shot test chrF: 12.8 through the chat template, 7.8 as plain text).
        return self.task.with_prompt(c.template, self.demos[:c.shots], self.options.chat_template)

    def outputs(self, c, examples: list[Example], with_loss: bool) -> tuple[Generated, float | None]:
        return self.task_for(c).outputs(self.model, self.tokenizer, examples, [], max_length=self.max_length,
                                        batch_size=self.batch_size, precision=self.precision, device=device(),
                                        with_loss=with_loss)

    def search_value(self, c, examples: list[Example], metric: str) -> float:
        """Candidate `c`'s `metric` on `examples`."""
        task = self.task_for(c)
        if metric in LIKELIHOOD_METRICS:
            loss = task.answer_loss(self.model, self.tokenizer, examples, self.max_length, self.batch_size,
                                    self.precision, device())
            return loss if metric == "loss" else perplexity(loss)
        outputs, _ = self.outputs(c, examples, with_loss=False)
        return task.metrics(outputs, examples, [])[metric]

    def state(self, c) -> dict[str, Any]:
        return {"demonstrations": [{"text": d.text, "label": d.label, "messages": d.messages}
                                   for d in self.demos[:c.shots]]}

    def restore(self, state: dict[str, Any], labels: list[str], options) -> None:
        self.options = options
        self.demos = [Example(d["text"], d["label"], messages=d.get("messages"))
                      for d in state.get("demonstrations", [])]

    def search_seconds(self, splits: Splits, options, metric: str) -> float:
        """Each candidate answers the search examples (or, searching by perplexity, scores their reference
        answers), then the chosen one answers validation and test; timed zero-shot on a sample, so demonstrations'
        longer prompts are not counted."""
        sample = splits.validation[:8]
        zero_shot = Candidate(self.task.options.template, shots=0)
        start = time.perf_counter()
        self.outputs(zero_shot, sample, with_loss=True)
        per_answer = (time.perf_counter() - start) / max(1, len(sample))
        start = time.perf_counter()
        self.search_value(zero_shot, sample, "loss")
        per_loss = (time.perf_counter() - start) / max(1, len(sample))
        searched = min(options.search_examples or len(splits.validation), len(splits.validation))
        per_search = per_loss if metric in LIKELIHOOD_METRICS else per_answer
        return (len(self.candidates()) * searched * per_search
                + (len(splits.validation) + len(splits.test)) * per_answer)
