"""Text metrics against hand-computed values."""
from __future__ import annotations

import math

import pytest

from tunelab.tasks.text_metrics import bleu, chrf, exact_match, normalize_answer, perplexity, token_f1


def test_squad_normalisation():
    assert normalize_answer("  The Cat,  sat on a MAT! ") == "cat sat on mat"
    assert normalize_answer("an apple") == "apple"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_exact_match():
    assert exact_match(["The cat", "a dog", "bird"], ["cat", "dog!", "fish"]) == pytest.approx(2 / 3)


def test_token_f1():
    # pred tokens {cat, sat, on, mat}, reference {cat, on, mat}: P = 3/4, R = 1, F1 = 6/7.
    assert token_f1(["the cat sat on the mat"], ["cat on the mat"]) == pytest.approx(6 / 7)
    assert token_f1(["dog"], ["cat"]) == 0.0
    assert token_f1(["the"], ["a"]) == 1.0  # both normalise to nothing
    assert token_f1(["cat sat", "dog"], ["cat", "dog"]) == pytest.approx((2 / 3 + 1) / 2)


def test_bleu():
    # 1-4 gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty.
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected, abs=1e-6)
    assert bleu(["a b c d"], ["a b c d"]) == pytest.approx(100.0)


def test_chrf():
    # character n-grams: order 1 P = R = 2/3, order 2 1/2, order 3 0 (no longer n-grams): mean 7/18, F = 7/18.
    assert chrf(["abc"], ["abd"]) == pytest.approx(100 * 7 / 18, abs=1e-6)
    assert chrf(["same text"], ["same text"]) == pytest.approx(100.0)


def test_perplexity():
    assert perplexity(math.log(4.0)) == pytest.approx(4.0)
    assert perplexity(0.0) == 1.0
    assert perplexity(1e6) == math.inf
