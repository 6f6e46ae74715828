"""Generation: supervised fine-tuning of a decoder on prompt → answer pairs (instructions, chat,
translation), evaluated on what it generates.

Training minimises the cross-entropy of the answer tokens only: prompt and padding positions are
labelled -100, which the causal-LM loss ignores. Evaluation generates in batches padded on the
LEFT (a decoder continues from the last position, so every prompt must end there), then cuts each
answer at the first stop string; metrics are in `text_metrics`.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torch import nn

from ..data import Example
from ..errors import TrainingError, TunelabError
from ..training import distributed, fsdp
from ..training.batches import Batches
from ..training.loop import predict_scores
from ..training.precision import autocast
from ..typed import non_negative, option, positive
from ..uncertainty import mean_of
from .base import Task, gold_in
from .generation_rows import generation_examples
from .registry import register
from .text_metrics import exact_match, perplexity, text_metrics, token_f1

IGNORE = -100  # the label torch's cross-entropy (and so every HF causal-LM loss) skips


def _has_source(v: str) -> str | None:
    return None if "{source}" in v else "must contain {source}, where the example's prompt goes"


def _top_p(v: float) -> str | None:
    return None if 0 < v <= 1 else "must be above 0 and at most 1"


@dataclass
class GenerationOptions:
    """The `generation:` block: how prompts are written, truncated, and answered."""
    template: str = option("{source}", "How a prompt (the `prompt` or `source` column) is written for the model; "
                           "`{source}` marks where the text goes, e.g. \"Translate English to French:\\n{source}\\n\". "
                           "Not used for `messages` data, whose turns are given as they are.", _has_source)
    chat_template: Literal["auto", "on", "off"] = option("auto", "Render the prompt through the tokenizer's chat "
                                                         "template: `auto` where it has one, `on` (an error without "
                                                         "one), `off`: plain text ending in a newline. The prompt "
                                                         "method follows its own `chat_template` option instead.")
    truncation_side: Literal["left", "right"] = option("left", "Which end of prompt + answer is cut when it is longer "
                                                       "than data.max_length. `left` drops the prompt's start and "
                                                       "keeps the answer; `right` drops the answer's end. Prompts "
                                                       "for generation always keep their last tokens.")
    max_new_tokens: int = option(64, "Longest generated answer, in tokens.", positive)
    num_beams: int = option(1, "Beam-search width; 1 is greedy (or sampling with do_sample).", positive)
    do_sample: bool = option(False, "Sample tokens instead of choosing the most likely (seeded by train.seed).")
    temperature: float = option(1.0, "Sampling temperature (with do_sample); lower is more conservative.", positive)
    top_p: float = option(1.0, "Nucleus sampling (with do_sample): sample from the smallest set of tokens whose "
                          "probability reaches top_p.", _top_p)
    repetition_penalty: float = option(1.0, "Divides the score of every token already in the prompt or answer "
                                       "(1 = off; 1.1-1.3 curbs the loops small models fall into).", positive)
    no_repeat_ngram_size: int = option(0, "Never repeat an n-gram of this many tokens in an answer (0 = off).",
                                       non_negative)
    stop: list[str] = option(doc="Strings that end an answer: the output is cut at the first one found.",
                             factory=list)


@dataclass
class Generated:
    """What the task's `outputs` gives: one answer per example and the mean answer-token loss."""
    texts: list[str]
    loss: float | None = None

    def __len__(self) -> int:
        return len(self.texts)


@register
class GenerationTask(Task):
    name = "generation"
    label_kind = "text"
    required_columns = ()  # prompt/response, source/target or messages: checked when the rows are read
    metric_names = ("chrf", "bleu", "exact_match", "f1", "perplexity", "loss")
    default_metric = "chrf"
    # Exact match is left out: a translation or a chat reply almost never matches its reference word for word.
    shown_metrics = ("chrf", "bleu", "f1", "perplexity")
    lower_is_better = frozenset({"loss", "perplexity"})
    percent_metrics = frozenset({"chrf", "bleu"})
    peft_task_type = "CAUSAL_LM"
    whole_batch_keys = ("logits_to_keep",)  # positions, the same for every row
    head_names = ()  # the language-model head is the pretrained one
    diagnostic_sample = 64  # generating is ~max_new_tokens forward passes per example

    def examples(self, rows: list[tuple[str, dict[str, Any]]], columns: dict[str, str],
                 need_label: bool = True) -> list[Example]:
        return generation_examples(rows, columns, need_label)

    def n_targets(self, batch: dict[str, torch.Tensor]) -> int:
        # Token labels: a causal LM predicts token t+1 from position t, so the first label is never a target.
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    Options = GenerationOptions
    options_doc = "Prompts, truncation and decoding of the `generation` task."

    def __init__(self, options: GenerationOptions | None = None, seed: int = 0,
                 demonstrations: list[Example] | None = None):
        self.options = options or GenerationOptions()
        self.seed = seed
        self.demonstrations = demonstrations or []  # solved examples shown before the input (prompt method)
        self.answer_logits_only = False  # set by `bind`: the model computes logits at the positions it is told

    def bind(self, model: nn.Module) -> None:
        # Nearly every causal LM in transformers takes `logits_to_keep`; a model that does not gets every logit.
        # `model` is the loaded transformers model, before a method wraps it.
        self.answer_logits_only = "logits_to_keep" in inspect.signature(model.forward).parameters

    def configure(self, cfg) -> "GenerationTask":
        return GenerationTask(self.options_in(cfg), cfg.train.seed)

    def with_prompt(self, template: str, demonstrations: list[Example], chat_template: str | None = None
                    ) -> "GenerationTask":
        """This task writing its prompts with `template` after `demonstrations` (a prompt-search candidate),
        through the chat template or not as `chat_template` says (unset: as the task's options say)."""
        options = dataclasses.replace(self.options, template=template.replace("{text}", "{source}"),
                                      chat_template=chat_template or self.options.chat_template)
        task = copy.copy(self)  # what `bind` noted of the model carries over
        task.options, task.demonstrations = options, demonstrations
        return task

    def auto_class(self):
        from transformers import AutoModelForCausalLM
        return AutoModelForCausalLM

    def model_kwargs(self, labels: list[str]) -> dict[str, Any]:
        return {}

    def targets(self, examples: list[Example], labels: list[str]) -> None:
        return None  # token labels travel in the features

    # -- prompts and token labels ------------------------------------------------------------
    def messages(self, example: Example) -> list[dict[str, str]]:
        """The turns before the answer: a conversation's own, or the input written by the template."""
        return example.messages or [{"role": "user", "content": self.options.template.replace("{source}",
                                                                                             example.text)}]

    def prompt_text(self, tokenizer, example: Example) -> str:
        """The prompt as the model sees it: through the chat template, or plain text ending in a newline.

        Demonstrations come first, each as its prompt turns and its answer as the assistant's turn.
        """
        shown = [turn for d in self.demonstrations
                 for turn in self.messages(d) + [{"role": "assistant", "content": str(d.label)}]]
        messages = shown + self.messages(example)
        if self._use_chat_template(tokenizer):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if example.messages or any(d.messages for d in self.demonstrations):
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        else:  # plain prompts: each demonstration's prompt, a newline, its answer, a blank line
            text = "".join(_line(m["content"]) + (str(a["content"]) + "\n\n")
                           for m, a in zip(shown[::2], shown[1::2])) + messages[-1]["content"]
        return _line(text)

    def _use_chat_template(self, tokenizer) -> bool:
        has = bool(getattr(tokenizer, "chat_template", None))
        if self.options.chat_template == "on" and not has:
            raise TunelabError("`generation.chat_template` is on but the model's tokenizer has no chat template; "
                               "set it to auto or off")
        return has and self.options.chat_template != "off"

    def prompt_ids(self, tokenizer, example: Example) -> list[int]:
        ids = tokenizer(self.prompt_text(tokenizer, example), add_special_tokens=False)["input_ids"]
        # A chat template writes its own special tokens; plain text starts like the model's pretraining text.
        if tokenizer.bos_token_id is not None and not self._use_chat_template(tokenizer):
            ids = [tokenizer.bos_token_id] + ids
        return ids

    def encode(self, tokenizer, examples: list[Example], max_length: int) -> list[dict[str, list[int]]]:
        """input_ids and labels per example: labels are the answer tokens (+ end token), -100 on the prompt."""
        end = end_token_id(tokenizer)
        out = []
        for e in examples:
            prompt = self.prompt_ids(tokenizer, e)
            if e.label is None:  # predicting: the prompt alone, keeping its end
                out.append({"input_ids": prompt[-max_length:]})
                continue
            answer = tokenizer(e.label, add_special_tokens=False)["input_ids"] + ([end] if end is not None else [])
            ids, labels = prompt + answer, [IGNORE] * len(prompt) + answer
            if len(ids) > max_length:
                cut = slice(len(ids) - max_length, None) if self.options.truncation_side == "left" \
                    else slice(0, max_length)
                ids, labels = ids[cut], labels[cut]
            out.append({"input_ids": ids, "labels": labels})
        return out

    def collate(self, tokenizer, features: list[dict[str, list[int]]], multiple: int = 1) -> dict[str, torch.Tensor]:
        """Right-padded batch for the loss; padding is masked out of attention and labelled -100. Widths stay exact
        whatever `multiple` (rounding was not measured on this task)."""
        width = max(len(f["input_ids"]) for f in features)
        pad = tokenizer.pad_token_id
        batch = {
            "input_ids": torch.tensor([f["input_ids"] + [pad] * (width - len(f["input_ids"])) for f in features]),
            "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                            for f in features]),
        }
        if "labels" in features[0]:
            labels = torch.tensor([f["labels"] + [IGNORE] * (width - len(f["labels"])) for f in features])
            if not (labels[:, 1:] != IGNORE).any():
                raise TrainingError(f"every answer token of a batch of {len(features)} example(s) was truncated "
                                    f"away (sequences are cut at data.max_length = {width} tokens or fewer), so "
                                    f"there is nothing to learn or score; raise data.max_length or set "
                                    f"generation.truncation_side: left, which keeps the answer")
            batch["labels"] = labels
            if self.answer_logits_only:
                # Logits from the position before the batch's first answer token on: those of the prompt tokens
                # before it (vocabulary-wide, copied to fp32 by the loss) are never scored. The labels are cut
                # alike, so the model's shifted loss pairs each kept position with the token after it.
                first = int((labels != IGNORE).any(0).nonzero()[0])
                batch["logits_to_keep"] = torch.arange(max(first - 1, 0), width)
                batch["labels"] = labels[:, max(first - 1, 0):]
        return batch

    # -- outputs, predictions, metrics -------------------------------------------------------
    def outputs(self, model: nn.Module, tokenizer, examples: list[Example], labels: list[str], *, max_length: int,
                batch_size: int, precision: str, device: torch.device, with_loss: bool) -> tuple[Generated, float | None]:
        loss = None
        if with_loss and examples and all(e.label is not None for e in examples):
            loss = self.answer_loss(model, tokenizer, examples, max_length, batch_size, precision, device)
        texts = self.generate(model, tokenizer, examples, max_length, batch_size, precision, device)
        return Generated(texts, loss), loss

    def answer_loss(self, model: nn.Module, tokenizer, examples: list[Example], max_length: int, batch_size: int,
                    precision: str, device: torch.device) -> float:
        """Mean cross-entropy of the reference answers' tokens after their prompts (exp of it: perplexity)."""
        _, loss = predict_scores(model, Batches(self, tokenizer, examples, [], max_length), batch_size,
                                 precision, device, keep_outputs=False)
        return loss

    @torch.no_grad()
    def generate(self, model: nn.Module, tokenizer, examples: list[Example], max_length: int, batch_size: int,
                 precision: str, device: torch.device) -> list[str]:
        """Answers in example order: batches padded on the left, decoded after the prompt, cut at stop strings."""
        from transformers import GenerationConfig as HFGenerationConfig

        o = self.options
        pad, end = tokenizer.pad_token_id, end_token_id(tokenizer)
        sampling = {"temperature": o.temperature, "top_p": o.top_p} if o.do_sample else {}
        # Stop strings also end the decoding of a row (and of the batch once every row has one): a small model's
        # zero-shot answer often runs on to max_new_tokens, and every token is a forward pass.
        stops = {"stop_strings": [s for s in o.stop if s]} if any(o.stop) else {}
        config = HFGenerationConfig(max_new_tokens=o.max_new_tokens, num_beams=o.num_beams, do_sample=o.do_sample,
                                    repetition_penalty=o.repetition_penalty,
                                    no_repeat_ngram_size=o.no_repeat_ngram_size, pad_token_id=pad, eos_token_id=end,
                                    **sampling, **stops)
        prompts = [self.prompt_ids(tokenizer, e)[-max_length:] for e in examples]
        model.eval()
        torch.manual_seed(self.seed)  # sampling draws from torch's generator
        # Batches of prompts of similar length pad less; the answers are put back in example order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        texts: list[str] = [""] * len(prompts)
        mine = distributed.part(order)  # data-parallel: each process its part, gathered below
        # Sharded (FSDP), every token's forward gathers the weights from all processes: each makes as many calls as
        # rank 0 (the largest part; a stand-in prompt where its own are done), and `synced_gpus` keeps each call's
        # processes stepping together until all have finished.
        sharded = fsdp.is_sharded(model)
        for start in range(0, len(distributed.part(order, 0) if sharded else mine), batch_size):
            rows = mine[start:start + batch_size]
            input_ids, attention_mask = left_pad([prompts[i] for i in rows or order[:1]], pad)
            with autocast(precision, device):
                generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                           generation_config=config, tokenizer=tokenizer,
                                           **({"synced_gpus": True} if sharded else {}))
            answers = tokenizer.batch_decode(generated[:, input_ids.shape[1]:].cpu(), skip_special_tokens=True)
            for i, answer in zip(rows, answers):
                texts[i] = cut_at_stop(answer, o.stop)
        if distributed.world() > 1:
            for i, text in distributed.gather([(i, texts[i]) for i in mine]):
                texts[i] = text
        return texts

    def predictions(self, outputs: Generated, labels: list[str]) -> list[str]:
        return outputs.texts

    def metrics(self, outputs: Generated, examples: list[Example], labels: list[str]) -> dict[str, Any]:
        references = [e.label or "" for e in examples]
        out: dict[str, Any] = text_metrics(outputs.texts, references)
        if outputs.loss is not None:
            out["perplexity"] = perplexity(outputs.loss)
        return out

    def resampled_metric(self, rows: list[dict], metric: str, labels: list[str]
                         ) -> Callable[[np.ndarray], float] | None:
        """Exact match and F1 as means of per-row values; chrF and BLEU corpus-level, from each row's n-gram
        counts summed over the drawn rows. Perplexity and loss need per-example losses, which rows lack."""
        if not gold_in(rows, "reference"):
            return None
        predictions, references = [r["prediction"] for r in rows], [r["reference"] for r in rows]
        if metric in ("exact_match", "f1"):
            one = exact_match if metric == "exact_match" else token_f1
            return mean_of([one([p], [r]) for p, r in zip(predictions, references)])
        if metric in ("chrf", "bleu"):
            stats, score = corpus_statistics(metric, predictions, references)
            return lambda idx: score(stats[idx].sum(axis=0))
        return None

    def prediction_rows(self, examples: list[Example], outputs: Generated, labels: list[str]) -> Iterator[dict]:
        for e, prediction in zip(examples, outputs.texts):
            row: dict[str, Any] = {"prompt": e.text}
            if e.label is not None:
                row["reference"] = e.label
            row["prediction"] = prediction
            yield row


def corpus_statistics(metric: str, predictions: list[str], references: list[str]
                      ) -> tuple[np.ndarray, Callable[[np.ndarray], float]]:
    """Each sentence's sufficient statistics for sacreBLEU's chrF or BLEU (n-gram counts, lengths) and the corpus
    score of their sum, as sacreBLEU's own paired bootstrap (`sacrebleu/significance.py`) resamples them. The
    scorers keep their defaults, which are those of the `corpus_chrf`/`corpus_bleu` that `text_metrics` calls."""
    from sacrebleu.metrics import BLEU, CHRF
    scorer = CHRF() if metric == "chrf" else BLEU()
    stats = np.array(scorer._extract_corpus_statistics(predictions, [references]))
    return stats, lambda summed: float(scorer._compute_score_from_stats(summed).score)


def _line(text: str) -> str:
    """`text` ending in white space, so that what follows starts on its own."""
    return text if text[-1:].isspace() else text + "\n"


def end_token_id(tokenizer) -> int | None:
    """The token that ends an answer: end-of-sequence, or [SEP] for tokenizers without one."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def left_pad(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    return ids, mask


def cut_at_stop(text: str, stop: list[str]) -> str:
    """The text before the first stop string, stripped."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[:min(cuts)] if cuts else text).strip()
