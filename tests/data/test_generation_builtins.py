"""The generation built-ins: chatterbot prompt → reply pairs, Bible verse pairs, and splits by group."""
from __future__ import annotations

import pytest

from tunelab.settings import load_config
from tunelab.data import DATASETS, load_splits
from tunelab.errors import ConfigError
from tunelab.tasks import TASKS


def test_chatterbot_pairs_follow_the_conversations():
    examples = DATASETS.get("chatterbot").load()
    assert len(examples) > 1000
    first = examples[0]
    assert first.text == "What is AI?"
    assert first.label.startswith("Artificial Intelligence is the branch of engineering")
    assert all(e.text and e.label and e.group for e in examples)


def test_bible_pairs_are_verse_aligned():
    examples = DATASETS.get("bible_parallel").load()
    assert len(examples) == 31102
    genesis = examples[0]
    assert genesis.text == "In the beginning God created the heaven and the earth."
    assert genesis.label == "Au commencement, Dieu créa les cieux et la terre."
    john = next(e for e in examples if e.origin == "bible_parallel 43:3:16")
    assert john.text.startswith("For God so loved the world") and john.label.startswith("Car Dieu a tant aimé")
    assert len({e.group for e in examples}) == 66


def _splits(source, **data):
    cfg = load_config({"task": "generation", "model": "smollm2-135m", "data": {"source": source, **data}})
    return load_splits(cfg.data, TASKS.get("generation"))


def test_bible_is_split_by_book_with_exact_sizes_and_the_seed():
    splits = _splits("bible_parallel", max_examples=3000, split={"validation": 0.05, "test": 0.1, "seed": 0})
    assert (len(splits.validation), len(splits.test)) == (150, 300)
    books = [{e.group for e in part} for part in (splits.train, splits.validation, splits.test)]
    assert not books[0] & books[2] and not books[0] & books[1] and not books[1] & books[2]
    again = _splits("bible_parallel", max_examples=3000, split={"validation": 0.05, "test": 0.1, "seed": 0})
    assert [e.origin for e in again.test] == [e.origin for e in splits.test]
    other = _splits("bible_parallel", max_examples=3000, split={"validation": 0.05, "test": 0.1, "seed": 1})
    assert {e.group for e in other.test} != books[2]


def test_a_chatterbot_question_never_straddles_splits():
    splits = _splits("chatterbot")
    assert not {e.group for e in splits.train} & {e.group for e in splits.test}


def test_bible_language_pairs():
    from tunelab.data.builtin import BIBLES
    from tunelab.errors import ConfigError
    from tunelab.settings import load_config
    # The dataset checks its own option, against its own list of translations (no copy of it elsewhere).
    with pytest.raises(ConfigError, match=r"`data.languages` must be two different languages of "
                                          + ", ".join(BIBLES) + r" joined by '-', e.g. en-fr, got 'fr-xx'"):
        load_config({"task": "generation", "model": "smollm2-135m",
                     "data": {"source": "bible_parallel", "languages": "fr-xx"}})
    splits = _splits("bible_parallel", languages="fr-de", max_examples=200)
    assert splits.train and splits.validation and splits.test
    genesis = next(e for e in DATASETS.get("bible_parallel").load(languages="fr-de")
                   if e.origin == "bible_parallel 1:1:1")
    assert genesis.text.startswith("Au commencement") and genesis.label.startswith("Im Anfang")


def test_language_pair_errors():
    with pytest.raises(ConfigError) as bad:
        load_config({"task": "generation", "model": "smollm2-135m",
                     "data": {"source": "bible_parallel", "languages": "en-xx"}})
    assert "`data.languages`" in str(bad.value) and "e.g. en-fr" in str(bad.value)
    with pytest.raises(ConfigError) as wrong:
        load_config({"task": "generation", "model": "smollm2-135m",
                     "data": {"source": "chatterbot", "languages": "en-de"}})
    assert "applies to the built-in bible_parallel only" in str(wrong.value)
