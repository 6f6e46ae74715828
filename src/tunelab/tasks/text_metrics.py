"""Metrics of generated text against references: exact match and token F1 (SQuAD), BLEU and chrF
(sacreBLEU), and perplexity.

Exact match and F1 follow the SQuAD v1.1 evaluation script (Rajpurkar et al. 2016,
https://arxiv.org/abs/1606.05250): both sides are normalised (lowercase, punctuation and the
articles a/an/the removed, whitespace collapsed); F1 is the harmonic mean of the precision and
recall of the bag of normalised tokens, averaged over examples. BLEU (Papineni et al. 2002) and
chrF (Popović 2015) are corpus-level scores from `sacrebleu`, on its 0–100 scale. Perplexity is
exp of the mean answer-token cross-entropy: exp(−1/N · Σ log p(answer token | prefix)).
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after normalisation."""
    if not predictions:
        return 0.0
    return sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references)) / len(predictions)


def _f1(prediction: str, reference: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not gold:
        return float(pred == gold)  # both empty: a match; one empty: nothing in common
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(predictions: list[str], references: list[str]) -> float:
    """Mean over examples of the bag-of-tokens F1 between prediction and reference."""
    if not predictions:
        return 0.0
    return sum(_f1(p, r) for p, r in zip(predictions, references)) / len(predictions)


def bleu(predictions: list[str], references: list[str]) -> float:
    import sacrebleu
    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def chrf(predictions: list[str], references: list[str]) -> float:
    import sacrebleu
    return float(sacrebleu.corpus_chrf(predictions, [references]).score)


def perplexity(mean_token_loss: float) -> float:
    """exp of the mean answer-token loss (in nats); capped so that a diverged model gives inf, not an error."""
    return math.exp(mean_token_loss) if mean_token_loss < 700 else math.inf


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    return {"exact_match": exact_match(predictions, references), "f1": token_f1(predictions, references),
            "bleu": bleu(predictions, references), "chrf": chrf(predictions, references)}
