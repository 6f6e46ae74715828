"""Prompt formats beyond the config's search: does any zero-shot format of SmolLM2 get near 0.84 on Rotten Tomatoes?

`bench/prompt_ceiling.py` bounds the config's own eight prompts. This scores other formats a user might try
on the whole validation split, each raw, calibrated on training inputs and calibrated content-free:
the question after the review instead of before it, answers with no lead-in, plain text instead of the
chat template, the task description as the system message, and noisy-channel scoring (Min et al. 2022:
the likelihood of the review after "a {label} review", instead of the label's after the review).

    python bench/prompt_formats.py [configs/sentiment/smollm2_prompt.yaml] [--split validation]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tunelab import pipeline  # noqa: E402
from tunelab.settings import load_config  # noqa: E402
from tunelab.data import load_splits  # noqa: E402
from tunelab.methods.prompt import Candidate  # noqa: E402

Q = "Is the sentiment of this movie review positive or negative?"
# (chat template?, system message or None, input template, label template). The description is written
# into each template here, so the config's own description is switched off.
FORMATS = [
    (True, None, Q + "\n\nReview: {text}", "The sentiment is {label}"),  # the config search's pick
    (True, None, "Review: {text}\n\n" + Q, "The sentiment is {label}"),
    (True, None, "Review: {text}\n\n" + Q, "{label}"),
    (True, None, "Review: {text}\n\n" + Q, "This review is {label}"),
    (True, None, "Review: {text}\n\nIs this movie review positive or negative? Answer with one word.", "{label}"),
    (True, None, 'Movie review: "{text}"\n\nDid the reviewer like the movie? Answer positive or negative.', "{label}"),
    (True, None, "Classify the sentiment of this movie review as positive or negative.\n\nReview: {text}",
     "Sentiment: {label}"),
    (True, None, "{text}", "This review is {label}"),
    (True, Q, "Review: {text}", "The sentiment is {label}"),
    (True, Q, "Review: {text}", "Sentiment: {label}"),
    (True, "You classify movie reviews. Answer with one word: positive or negative.", "Review: {text}", "{label}"),
    (True, "You are an expert film critic.", Q + "\n\nReview: {text}", "The sentiment is {label}"),
    (False, None, "Review: {text}", "Sentiment: {label}"),
    (False, None, Q + "\n\nReview: {text}", "Answer: {label}"),
    (False, None, "Review: {text}\n" + Q, "Answer: {label}"),
    (False, None, "Movie review: {text}", "The sentiment of this review is {label}"),
    (False, None, "{text}", "All in all, the movie was {label}"),
]
CHANNEL_PREFIXES = ["A {label} movie review:", "This movie review is {label}. Review:",
                    "Here is a {label} review of the movie:\n"]


def with_system_message(tokenizer, system: list):
    """Make the tokenizer's chat template put `system[0]` (when set) first: the scorer writes user turns only."""
    render = tokenizer.apply_chat_template

    def apply(messages, **kwargs):
        head = [{"role": "system", "content": system[0]}] if system[0] else []
        return render(head + list(messages), **kwargs)
    tokenizer.apply_chat_template = apply


@torch.no_grad()
def channel_scores(model, tokenizer, prefix: str, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """log p(text | prefix) for each text, plain text, bf16 autocast on CPU."""
    head = tokenizer(prefix, add_special_tokens=False).input_ids
    space = "" if prefix.endswith("\n") else " "
    out = np.zeros(len(texts))
    for start in range(0, len(texts), batch_size):
        rows = [tokenizer(space + t, add_special_tokens=False).input_ids[:max_length]
                for t in texts[start:start + batch_size]]
        width = len(head) + max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id or 0)
        mask, targets = torch.zeros_like(ids), torch.full_like(ids, -100)
        for i, row in enumerate(rows):
            end = len(head) + len(row)
            ids[i, :end], mask[i, :end], targets[i, len(head):end] = torch.tensor(head + row), 1, torch.tensor(row)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        targets = targets[:, 1:]
        picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets != -100)
        out[start:start + batch_size] = picked.sum(1).numpy()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default="configs/sentiment/smollm2_prompt.yaml")
    parser.add_argument("--split", choices=["validation", "test"], default="validation")
    args = parser.parse_args()
    cfg = load_config(args.config, ['method.description=""'])
    splits = load_splits(cfg.data, pipeline.task_for(cfg).label_kind)
    adapted = pipeline.prepare(cfg, splits, log=lambda _: None)
    scorer, options = adapted.method.scorer, adapted.method.options
    scorer.setup(splits.train, splits.labels, options)
    system: list = [None]
    with_system_message(scorer.tokenizer, system)
    examples = getattr(splits, args.split)
    texts, y = [e.text for e in examples], np.array([splits.labels.index(e.label) for e in examples])
    print(f"{args.config}: {len(texts)} {args.split} reviews; accuracy raw / calibrated on training inputs / "
          f"calibrated content-free")
    for chat, system[0], template, label_template in FORMATS:
        scorer.chat, started = chat, time.time()
        c = Candidate(template, label_template, 0, True, verbalizer="label", calibration="inputs")
        raw = scorer.raw_scores(c, texts)
        accuracy = [float((s.argmax(1) == y).mean()) for s in (
            raw, scorer.calibrated(raw, scorer.bias(c)),
            scorer.calibrated(raw, scorer.bias(Candidate(template, label_template, 0, True, verbalizer="label",
                                                         calibration="content_free"))))]
        where = "chat" if chat else "plain"
        print(f"{where:5} system={system[0]!r:32.30} {template!r:62.60} {label_template!r:34.32}  "
              + " / ".join(f"{a:.3f}" for a in accuracy) + f"  ({time.time() - started:.0f} s)", flush=True)
    for prefix in CHANNEL_PREFIXES:
        started = time.time()
        scores = np.stack([channel_scores(scorer.model, scorer.tokenizer, prefix.format(label=label), texts,
                                          cfg.data.max_length, cfg.train.eval_batch_size)
                           for label in splits.labels], 1)
        print(f"channel {prefix!r}: accuracy {float((scores.argmax(1) == y).mean()):.3f}  "
              f"({time.time() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
