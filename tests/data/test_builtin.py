"""The built-in datasets, read from the files that installed packages ship."""
from __future__ import annotations

from collections import Counter

import pytest

from tunelab.settings import load_config
from tunelab.data import DATASETS, load_splits
from tunelab.tasks import TASKS


@pytest.fixture(scope="module")
def rotten_tomatoes():
    return DATASETS.get("rotten_tomatoes").load()


@pytest.fixture(scope="module")
def bbc_news():
    return DATASETS.get("bbc_news").load()


def test_registered_names():
    assert {"bbc_news", "rotten_tomatoes"} <= set(DATASETS.names())
    assert {"chatterbot", "bible_parallel"} <= set(DATASETS.names())
    assert DATASETS.get("bbc_news").task == DATASETS.get("rotten_tomatoes").task == "classification"
    assert all(d.task in ("classification", "extractive_qa", "generation") for _, d in DATASETS.items())


def test_rotten_tomatoes(rotten_tomatoes):
    labels = Counter(e.label for e in rotten_tomatoes)
    assert sorted(labels) == ["negative", "positive"]
    assert 12_700 <= len(rotten_tomatoes) <= 12_800
    assert labels["positive"] / len(rotten_tomatoes) == pytest.approx(0.58, abs=0.01)
    texts = [e.text for e in rotten_tomatoes]
    assert len(set(texts)) == len(texts), "duplicate snippets"
    assert all(t and t == t.strip() for t in texts)
    assert all(e.origin.startswith("rotten_tomatoes row ") for e in rotten_tomatoes)


def test_rotten_tomatoes_loads_the_same_twice(rotten_tomatoes):
    again = DATASETS.get("rotten_tomatoes").load()
    assert [(e.text, e.label) for e in again] == [(e.text, e.label) for e in rotten_tomatoes]


def test_bbc_news(bbc_news):
    labels = Counter(e.label for e in bbc_news)
    assert sorted(labels) == ["business", "entertainment", "politics", "sports", "tech"]
    # 2,225 files, of which 100 repeat another article word for word: each text is kept once.
    assert len(bbc_news) == 2_125
    assert len({e.text for e in bbc_news}) == len(bbc_news)
    assert labels == {"business": 503, "entertainment": 369, "politics": 403, "sports": 503, "tech": 347}
    assert all(e.text.strip() for e in bbc_news)
    # Whitespace is collapsed and the Windows-1252 articles decoded: no replacement characters.
    assert all("\n" not in e.text and "\ufffd" not in e.text for e in bbc_news)
    assert any("£" in e.text for e in bbc_news)


@pytest.mark.parametrize("name, labels", [("rotten_tomatoes", ["negative", "positive"]),
                                          ("bbc_news", ["business", "entertainment", "politics", "sports", "tech"])])
def test_builtin_splits(name, labels):
    cfg = load_config({"model": "minilm", "data": {"source": name, "max_examples": 500}})
    splits = load_splits(cfg.data, TASKS.get("classification"))
    assert splits.labels == labels
    assert splits.sizes() == {"train": 400, "validation": 50, "test": 50}
    for part in (splits.train, splits.validation, splits.test):
        assert {e.label for e in part} == set(labels)
