"""From a `DataConfig` to validated train/validation/test splits — before any model is loaded."""
from __future__ import annotations

import random
from collections import Counter
from typing import Any

from sklearn.model_selection import train_test_split

from ..config import DataConfig
from ..errors import DataError
from .builtin import DATASETS
from .examples import Example, Splits
from .files import read_rows


def load_splits(cfg: DataConfig, task) -> Splits:
    """The run's splits for `task` (a `tasks.Task`: it reads and checks the rows and names the labels)."""
    if cfg.source in DATASETS:
        dataset = DATASETS.get(cfg.source)
        examples = dataset.load(**{k: getattr(cfg, k) for k in dataset.options if getattr(cfg, k) is not None})
    else:
        examples = rows_to_examples(read_rows(cfg.source), cfg, task)
    labels = task.label_set(examples, cfg.labels, cfg.source)
    stratified = task.stratified
    if cfg.max_examples is not None and cfg.max_examples < len(examples):
        examples = _subset(examples, cfg.max_examples, stratified, cfg.split.seed)

    hold_val = cfg.validation_file is None
    hold_test = cfg.test_file is None
    val_frac = cfg.split.validation if hold_val else 0.0
    test_frac = cfg.split.test if hold_test else 0.0
    train, val, test = _split(examples, val_frac, test_frac, stratified, cfg.split.seed, cfg.source)
    if not hold_val:
        val = rows_to_examples(read_rows(cfg.validation_file), cfg, task)
    if not hold_test:
        test = rows_to_examples(read_rows(cfg.test_file), cfg, task)
    splits = Splits(train, val, test, labels)
    for name, part in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        if not part:
            source = getattr(cfg, f"{name}_file", None) or cfg.source
            raise DataError(f"{source}: the {name} split has no examples; add examples or change data.split")
    task.check_splits(splits, cfg.source)
    return splits


def rows_to_examples(rows: list[tuple[str, dict[str, Any]]], cfg: DataConfig, task,
                     need_label: bool = True) -> list[Example]:
    """A file's rows → the task's examples, with the configured column names."""
    return task.examples(rows, cfg.columns, need_label)


def _stratify(examples: list[Example], stratified: bool) -> list | None:
    if not stratified:
        return None
    counts = Counter(e.label for e in examples)
    # Stratifying needs two examples of every class; rarer classes fall back to a plain shuffle.
    return [e.label for e in examples] if min(counts.values()) >= 2 else None


def _stratify_sizes(examples: list[Example], stratified: bool, n_out: int) -> list | None:
    strat = _stratify(examples, stratified)
    if strat is not None and min(n_out, len(examples) - n_out) < len(set(strat)):
        strat = None  # a side smaller than the number of classes cannot hold one of each
    return strat


def _subset(examples: list[Example], n: int, stratified: bool, seed: int) -> list[Example]:
    kept, _ = train_test_split(examples, train_size=n, random_state=seed,
                               stratify=_stratify_sizes(examples, stratified, n))
    return kept


def _split(examples: list[Example], val: float, test: float, stratified: bool, seed: int, where: str):
    rest, test_set = examples, []
    if test > 0:
        rest, test_set = _cut(examples, test, stratified, seed, "test", where)
    val_set = []
    if val > 0:
        # A group split drops the tail of the last held-out group, so count from the original size.
        frac = val * len(examples) / len(rest) if _grouped(examples) else val / (1 - test)
        rest, val_set = _cut(rest, frac, stratified, seed, "validation", where)
    return rest, val_set, test_set


def _cut(examples: list[Example], frac: float, stratified: bool, seed: int, name: str, where: str):
    n_out = int(round(frac * len(examples)))
    if n_out == 0 or n_out >= len(examples):
        raise DataError(f"{where}: data.split.{name} = {frac:.3g} of {len(examples)} examples leaves the {name} "
                        f"split {'empty' if n_out == 0 else 'with everything'}; add examples or change "
                        f"data.split.{name}")
    if _grouped(examples):
        return _group_cut(examples, n_out, seed, name, where)
    strat = _stratify_sizes(examples, stratified, n_out)
    return train_test_split(examples, test_size=n_out, random_state=seed, stratify=strat)


def _grouped(examples: list[Example]) -> bool:
    return bool(examples) and all(e.group is not None for e in examples)


def _group_cut(examples: list[Example], n_out: int, seed: int, name: str, where: str):
    """Whole groups, shuffled by `seed`, are held out until they hold `n_out` examples; the held-out side is
    trimmed to exactly `n_out` (the trimmed rest of the last group is dropped, never put back into training)."""
    sizes = Counter(e.group for e in examples)
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    held: list[str] = []
    for group in order:
        if sum(sizes[g] for g in held) >= n_out:
            break
        held.append(group)
    if len(held) == len(order):
        raise DataError(f"{where}: holding out {n_out} examples for {name} takes every group ({len(order)}); "
                        f"lower data.split.{name} or add examples")
    rank = {g: i for i, g in enumerate(held)}
    out = sorted((e for e in examples if e.group in rank), key=lambda e: rank[e.group])[:n_out]
    return [e for e in examples if e.group not in rank], out
