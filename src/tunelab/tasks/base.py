"""What a task defines: how examples become model inputs and targets, how a model's outputs are
read back as predictions, and which metrics apply. Methods never look inside a task, and tasks
never know the method.

The defaults here serve tasks that score a fixed label set (classification, regression): one
forward pass gives a score array per example. A task whose outputs are not scores (generation)
overrides `encode`/`collate` (token-level labels) and `outputs` (what the model produces).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Iterator

import numpy as np
import torch
from torch import nn

from ..data import Example
from ..errors import DataError
from ..training.batches import Batches
from ..training.loop import predict_scores
from ..training.precision import pad_multiple

ENCODE_CHUNK = 1000  # texts the tokenizer holds at once (`Task.encode`)


def gold_in(rows: list[dict], key: str) -> bool:
    """Whether every row holds its gold answer under `key` (rows of unlabelled data do not), and there are rows."""
    return bool(rows) and all(key in row for row in rows)



class Task:
    name: ClassVar[str]
    label_kind: ClassVar[str]  # "class", "number", "span" or "text": what an example's label holds
    required_columns: ClassVar[tuple[str, ...]] = ("text", "label")
    metric_names: ClassVar[tuple[str, ...]]
    default_metric: ClassVar[str]
    shown_metrics: ClassVar[tuple[str, ...]] = ()  # test metrics a comparison table shows beside the chosen one
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss"})
    percent_metrics: ClassVar[frozenset[str]] = frozenset()  # on a 0–100 scale (the others: 0–1, or errors)
    peft_task_type: ClassVar[str] = "SEQ_CLS"  # peft's name for the model kind this task trains
    # The task head's modules in the Auto* model this task loads: every method trains them. Named, not only found
    # among the newly initialised modules, since a checkpoint saved with a head would not report it missing.
    head_names: ClassVar[tuple[str, ...]] = ("classifier", "score", "pooler")
    # Batch entries that are not one row per feature (data-parallel training gives each process some rows of a
    # collated batch, and these whole).
    whole_batch_keys: ClassVar[tuple[str, ...]] = ()
    stratified: ClassVar[bool] = False  # whether splits keep each label's share of the examples
    diagnostic_sample: ClassVar[int] = 1000  # train examples scored for the train/validation gap

    # A task with options of its own gives their typed dataclass here: the config gets a top-level block named
    # after the task (`generation:`), documented by `options_doc`, built and checked by `settings`.
    Options: ClassVar[type | None] = None
    options_doc: ClassVar[str] = ""

    def configure(self, cfg) -> "Task":
        """The task with the run's own options (`RunConfig`); tasks without options return themselves."""
        return self

    def options_in(self, cfg) -> Any:
        """This task's options in a `RunConfig`: its block, or the defaults in a config built without one."""
        return cfg.task_options.get(self.name) or self.Options()

    def bind(self, model: nn.Module) -> None:
        """Note what the task may ask of the model it will run on (called once the model is loaded)."""

    def config_problems(self, cfg) -> list[str]:
        """This task's rules on a whole `RunConfig` (its options against `data.max_length`, say)."""
        return []

    def check_data(self, tokenizer, splits, max_length: int) -> None:
        """Data problems only the task's options or its tokenizer show, raised as `DataError` before the model
        loads (a QA question too long for its window, or unanswerable where that is not allowed)."""

    @property
    def checks_data(self) -> bool:
        """Whether this task overrides `check_data` (only then is a tokenizer loaded for it)."""
        return type(self).check_data is not Task.check_data

    # -- data: rows of a file → checked examples, and the label set --------------------------------------
    def examples(self, rows: list[tuple[str, dict[str, Any]]], columns: dict[str, str],
                 need_label: bool = True) -> list[Example]:
        """A data file's rows (`origin`, row) → examples, every row checked: an error names the row and the fix.
        Here: a text (and optional second text) and a label, read by `parse_label`."""
        return labelled_texts(rows, columns, need_label, self.parse_label)

    def parse_label(self, value: Any, origin: str, column: str) -> Any:
        """A label cell as the task stores it, or a `DataError` naming the row."""
        return value

    def label_set(self, examples: list[Example], declared: list[Any] | None, where: str) -> list[str]:
        """The labels a model scores, in order (classification); none for other tasks."""
        return []

    def check_splits(self, splits, source: str) -> None:
        """Problems of the split data as a whole (a class missing from training), raised as `DataError`."""

    def n_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """How many targets a batch's mean loss is over: its features here (span targets have no `labels`)."""
        labels = batch.get("labels")
        return len(batch["input_ids"]) if labels is None else len(labels)

    def auto_class(self):
        raise NotImplementedError

    def model_kwargs(self, labels: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def targets(self, examples: list[Example], labels: list[str]) -> torch.Tensor | None:
        """One target per example, or None where `encode` puts the targets in the features."""
        raise NotImplementedError

    def logits(self, output) -> torch.Tensor:
        """What `predict_scores` keeps of one forward pass (a model output): a row per feature."""
        return output.logits

    def predictions(self, outputs: Any, labels: list[str]) -> list[Any]:
        raise NotImplementedError

    def metrics(self, outputs: Any, examples: list[Example], labels: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def resampled_metric(self, rows: list[dict], metric: str, labels: list[str]
                         ) -> Callable[[np.ndarray], float] | None:
        """`metric` recomputed on the rows (of predictions.jsonl) at an index array, repeats allowed, for
        bootstrap intervals (`uncertainty`); None where the rows cannot give it (a loss, rows without gold).

        What is per-example is computed once, outside the returned function: it is called ~1,000 times.
        """
        return None

    def better(self, metric: str, new: float, old: float | None) -> bool:
        if old is None:
            return True
        return new < old if metric in self.lower_is_better else new > old

    def encode(self, tokenizer, examples: list[Example], max_length: int) -> list[dict[str, np.ndarray]]:
        """Token ids per example, unpadded: batches are padded to their own longest input.

        Memory stays small as the data grow: the tokenizer runs on 1,000 texts at a time (its per-text objects,
        offsets and tokens, held for all 16,000 short reviews at once, left the process 100 MB larger), and each
        key is an int32 array rather than a list of Python ints (~40 bytes a token). Measured on 16,000 Rotten
        Tomatoes reviews: 119 MB more resident memory in one call with lists, 21 MB in chunks with arrays.

        A task may give several features per example (windows of a long text); each then holds
        `example`, the index of its example, and its `collate` leaves that key out of the batch.
        """
        features = []
        for start in range(0, len(examples), ENCODE_CHUNK):
            chunk = examples[start:start + ENCODE_CHUNK]
            pairs = [e.text_pair for e in chunk] if chunk[0].text_pair is not None else None
            enc = tokenizer([e.text for e in chunk], pairs, truncation=True, max_length=max_length)
            keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
            features += [{k: np.asarray(enc[k][i], dtype=np.int32) for k in keys} for i in range(len(chunk))]
        return features

    def collate(self, tokenizer, features: list[dict[str, np.ndarray]], multiple: int = 1) -> dict[str, torch.Tensor]:
        """Encoded examples → one batch of tensors, padded as `tokenizer.pad` pads (its side, its pad ids), to a
        width that is a multiple of `multiple` (`DataCollatorWithPadding(pad_to_multiple_of=...)`; the precision
        decides it: `training.precision.pad_multiple`), never past the model's longest input."""
        width = max(len(f["input_ids"]) for f in features)
        width = min(-(-width // multiple) * multiple, max(width, tokenizer.model_max_length))
        pads = {"input_ids": tokenizer.pad_token_id or 0, "token_type_ids": tokenizer.pad_token_type_id}
        left = tokenizer.padding_side == "left"
        batch = {}
        for key in features[0]:
            out = np.full((len(features), width), pads.get(key, 0), dtype=np.int64)
            for row, f in zip(out, features):
                n = len(f[key])
                row[width - n if left else 0:width if left else n] = f[key]
            batch[key] = torch.from_numpy(out)
        return batch

    def outputs(self, model: nn.Module, tokenizer, examples: list[Example], labels: list[str], *, max_length: int,
                batch_size: int, precision: str, device: torch.device, with_loss: bool) -> tuple[Any, float | None]:
        """What the model produces for `examples` (here: a score array) and the mean loss where asked."""
        batches = Batches(self, tokenizer, examples, labels, max_length, with_targets=with_loss,
                          multiple=pad_multiple(precision))
        return predict_scores(model, batches, batch_size, precision, device)

    def prediction_rows(self, examples: list[Example], outputs: Any, labels: list[str]) -> Iterator[dict[str, Any]]:
        """One JSON-ready row per example for predictions.jsonl."""
        for e, pred, row in zip(examples, self.predictions(outputs, labels), outputs):
            out = {"text": e.text, "prediction": pred}
            if e.label is not None:
                out["label"] = e.label
            if labels:
                out["scores"] = {label: round(float(s), 6) for label, s in zip(labels, row)}
            yield out


def labelled_texts(rows: list[tuple[str, dict[str, Any]]], columns: dict[str, str], need_label: bool,
                   parse_label: Callable[[Any, str, str], Any]) -> list[Example]:
    """Rows of a text (`text`, and `text_pair` where configured) and a label → examples; the column names come
    from `data.columns`."""
    text_col = columns.get("text", "text")
    label_col = columns.get("label", "label")
    pair_col = columns.get("text_pair")
    origin0, first = rows[0]
    file = origin0.rsplit(" ", 2)[0]
    needed = [("text", text_col)] + ([("label", label_col)] if need_label else []) + \
        ([("text_pair", pair_col)] if pair_col else [])
    for role, col in needed:
        if col not in first:
            raise DataError(f"{file}: no column {col!r} (columns: {', '.join(map(str, first))}); "
                            f"name it `{col}`, or set data.columns.{role} to the column that holds the {role}")
    out = []
    for origin, row in rows:
        text = row.get(text_col)
        if isinstance(text, (list, dict)):  # JSON rows: a list or object where a text belongs
            raise DataError(f"{origin}: column {text_col!r} holds a {type(text).__name__}, not a text; give one "
                            f"string per row")
        if text is None or not str(text).strip():
            raise DataError(f"{origin}: empty text in column {text_col!r}; fill it in or remove the row")
        pair = None
        if pair_col:
            pair = row.get(pair_col)
            if pair is None or not str(pair).strip():
                raise DataError(f"{origin}: empty text in column {pair_col!r}; fill it in or remove the row")
            pair = str(pair)
        label = row.get(label_col) if label_col in row else None
        if label is None or (isinstance(label, str) and not label.strip()):
            if need_label:
                raise DataError(f"{origin}: missing label in column {label_col!r}; add it or remove the row")
            label = None
        else:
            label = parse_label(label, origin, label_col)
        out.append(Example(str(text), label, pair, origin))
    return out
