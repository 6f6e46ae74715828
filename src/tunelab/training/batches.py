"""Tokenised examples → padded tensor batches. Each batch is padded to its own longest input (classification and
regression round that up to a multiple of 8 in bf16: `precision.pad_multiple`), which on short texts saves most of
the compute that padding to `max_length` would waste.

A batch holds features, not examples: a task may turn one example into several (the windows of a
long context in extractive QA); the task reads its outputs back into one prediction per example."""
from __future__ import annotations

from typing import Iterator

import torch

from ..data import Example
from .distributed import part
from .fsdp import Filler


class Batches:
    def __init__(self, task, tokenizer, examples: list[Example], labels: list[str], max_length: int,
                 with_targets: bool = True, multiple: int = 1):
        self.task = task
        self.tokenizer = tokenizer
        self.multiple = multiple  # batch widths rounded up to a multiple of this (where the task pads so)
        self.features = task.encode(tokenizer, examples, max_length)
        # Features may outnumber examples (windows of a long context): each one's example, for its target.
        self.example_of = [f.get("example", i) for i, f in enumerate(self.features)]
        self.targets = task.targets(examples, labels) if with_targets else None

    def __len__(self) -> int:
        return len(self.features)

    def iterate(self, batch_size: int, generator: torch.Generator | None = None,
                group_by_length: bool = False, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches in order, or shuffled by `generator` (seeded: the same seed gives the same order).

        `group_by_length` (with a generator), as Hugging Face Trainer's option of that name: the shuffled order is
        cut into mega-batches of 50 batches, each sorted by length, so a batch holds inputs of similar length and
        pads less. Unlike the Trainer's, the batches of a mega-batch then come in random order, not longest to
        shortest: a sweep from long to short inputs in every group (and at the end of training, where the learning
        rate is lowest) is a trend in what the model sees that random batches do not have. `skip` leaves out the
        first batches of that order (a run resumed mid-epoch), without collating them."""
        order = self._order(batch_size, generator, group_by_length)
        for start in range(skip * batch_size, len(order), batch_size):
            yield self.batch(order[start:start + batch_size])

    def steps(self, batch_size: int, accumulate: int = 1, generator: torch.Generator | None = None,
              group_by_length: bool = False, skip: int = 0, rank: int = 0, world: int = 1, fill: bool = False
              ) -> Iterator[list[dict[str, torch.Tensor] | None]]:
        """One list of micro-batches per optimisation step: the batches of `iterate` at batch_size × accumulate,
        each cut into `accumulate` micro-batches of `batch_size` (each padded to its own longest). The steps hold
        the same examples as at batch_size × accumulate without accumulation, so the two train alike.

        With `world` processes (data-parallel training, `distributed.py`), every process draws the same order and
        process `rank` keeps its rows of each micro-batch (`distributed.part`: batch_size / world examples, the
        length grouping included), collated with the whole micro-batch, so padded as one process pads it (a span
        loss over every position sees the padding); None where a short last micro-batch leaves it nothing, or with
        `fill` (sharded training, which needs every process in every forward) its first row as a `Filler`."""
        step = batch_size * accumulate
        order = self._order(step, generator, group_by_length)
        for start in range(skip * step, len(order), step):
            idx = order[start:start + step]
            micro = [idx[j:j + batch_size] for j in range(0, len(idx), batch_size)]
            if world == 1:
                yield [self.batch(m) for m in micro]
                continue
            rows = [part(range(len(m)), rank, world) for m in micro]
            yield [self.rows_of(self.batch(m), r) if len(r) else
                   Filler(self.rows_of(self.batch(m), range(1))) if fill else None for m, r in zip(micro, rows)]

    def rows_of(self, batch: dict[str, torch.Tensor], rows: range) -> dict[str, torch.Tensor]:
        """Rows `rows` of a collated batch (and the entries that are the batch's as a whole)."""
        return {k: v if k in self.task.whole_batch_keys else v[rows.start:rows.stop] for k, v in batch.items()}

    def _order(self, batch_size: int, generator: torch.Generator | None, group_by_length: bool) -> list[int]:
        order = torch.randperm(len(self), generator=generator).tolist() if generator is not None \
            else list(range(len(self)))
        if group_by_length and generator is not None:
            mega = 50 * batch_size
            grouped = []
            for start in range(0, len(order), mega):
                by_length = sorted(order[start:start + mega], key=lambda i: -len(self.features[i]["input_ids"]))
                cut = [by_length[j:j + batch_size] for j in range(0, len(by_length), batch_size)]
                full = len(by_length) // batch_size  # a short last batch stays last: later ones keep their bounds
                cut[:full] = [cut[k] for k in torch.randperm(full, generator=generator).tolist()]
                grouped += [i for rows in cut for i in rows]
            order = grouped
        return order

    def batch(self, idx: list[int]) -> dict[str, torch.Tensor]:
        batch = self.task.collate(self.tokenizer, [self.features[i] for i in idx], self.multiple)
        if self.targets is not None:
            batch["labels"] = self.targets[[self.example_of[i] for i in idx]]
        return batch

    def n_batches(self, batch_size: int) -> int:
        return (len(self) + batch_size - 1) // batch_size


def timing_batches(batches: Batches, batch_size: int, generator: torch.Generator, n: int,
                   group_by_length: bool = False) -> list[dict[str, torch.Tensor]]:
    """`n` batches to time training steps on (`tunelab estimate`): the longest batch first (the activation peak,
    untimed as warm-up), then batches as training draws them.

    Shuffled, not sorted: a random batch is padded to its longest text, and that padding is part of the real cost
    per step. With `group_by_length` each batch holds like lengths, and the first ones drawn are a few of one
    group: the timed ones are spread evenly over the widths of the epoch's batches instead."""
    longest = sorted(range(len(batches)), key=lambda i: -len(batches.features[i]["input_ids"]))

    def width(rows: list[int]) -> int:
        return max(len(batches.features[i]["input_ids"]) for i in rows)

    picked: list[list[int]] = []
    while len(picked) < n - 1:  # another epoch's order where one holds fewer batches than asked for
        order = batches._order(batch_size, generator, group_by_length)
        rows = [order[j:j + batch_size] for j in range(0, len(order), batch_size)]
        want = min(len(rows), n - 1 - len(picked))
        if group_by_length:
            rows.sort(key=width)
            rows = [rows[int((k + 0.5) * len(rows) / want)] for k in range(want)]
        picked += rows[:want]
    return [batches.batch(longest[:batch_size])] + [batches.batch(rows) for rows in picked]
