"""The user's data files: bad input ends `tunelab train` with one line before any model loads; good input loads."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tunelab import api
from tunelab.cli import main
from tunelab.settings import load_config
from tunelab.data import load_splits
from tunelab.tasks import TASKS


def rows(n: int, positive_every: int = 2) -> list[tuple[str, str]]:
    """`n` distinct (text, label) rows; every `positive_every`-th one is positive."""
    return [(f"review number {i} was {'good' if i % positive_every == 0 else 'bad'}",
             "positive" if i % positive_every == 0 else "negative") for i in range(n)]


def csv_text(data: list[tuple[str, str]]) -> str:
    return "text,label\n" + "".join(f"{t},{label}\n" for t, label in data)


def jsonl_text(data: list[tuple[str, str]]) -> str:
    return "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in data)


# --- bad input through the CLI -------------------------------------------------------------------------------

@dataclass
class Bad:
    file: str                    # name of the data file written in tmp_path
    content: str | bytes | None  # None: the file is not written
    says: list[str]              # fragments the message must contain (what is wrong and what to do)
    line: str | None = None      # "line 7" / "row 3": where in the file, when it applies
    data: dict = field(default_factory=dict)  # extra `data:` keys
    task: str = "classification"


TWENTY = rows(20)

BAD = {
    "missing_file": Bad("missing.csv", None, ["`data.source`", "neither a built-in dataset (bbc_news, bible_parallel, chatterbot, "
                                              "rotten_tomatoes, tunelab_qa) nor an existing file"]),
    "missing_column": Bad("reviews.csv", "review,label\n" + csv_text(TWENTY).split("\n", 1)[1],
                          ["no column 'text'", "columns: review, label", "name it `text`", "data.columns.text"]),
    "empty_file": Bad("reviews.csv", "", ["the file is empty", "add examples"]),
    "blank_file": Bad("reviews.jsonl", "\n  \n\n", ["the file is empty", "add examples"]),
    "header_only": Bad("reviews.csv", "text,label\n", ["no example rows", "add examples"]),
    # Line 3 is blank and still counts: the broken object is on line 5.
    "malformed_json_line": Bad("reviews.jsonl", jsonl_text(TWENTY[:2]) + "\n" + jsonl_text(TWENTY[2:3]) +
                               '{"text": "broken", "label": "positive"\n' + jsonl_text(TWENTY[3:]),
                               ["malformed JSON", "each line must be one JSON object"], line="line 5"),
    "json_line_not_an_object": Bad("reviews.jsonl", jsonl_text(TWENTY[:3]) + '["a list"]\n' + jsonl_text(TWENTY[3:]),
                                   ["expected a JSON object", "got list"], line="line 4"),
    "non_utf8": Bad("reviews.csv", (csv_text(TWENTY[:5]) + "caf\xe9 was good,positive\n" +
                                    csv_text(TWENTY[5:]).split("\n", 1)[1]).encode("latin-1"),
                    ["byte 0xe9 is not UTF-8", "re-save the file as UTF-8"], line="line 7"),
    # The quoted cell on lines 3-4 spans two lines: the empty text is on line 6.
    "empty_text": Bad("reviews.csv", csv_text(TWENTY[:1]) + '"spans\ntwo lines",positive\n' +
                      csv_text(TWENTY[1:2]).split("\n", 1)[1] + "  ,negative\n" + csv_text(TWENTY[2:]).split("\n", 1)[1],
                      ["empty text in column 'text'", "fill it in or remove the row"], line="line 6"),
    "missing_label": Bad("reviews.csv", csv_text(TWENTY[:8]) + "no label here,\n" + csv_text(TWENTY[8:]).split("\n", 1)[1],
                         ["missing label in column 'label'", "add it or remove the row"], line="line 10"),
    "missing_label_key": Bad("reviews.jsonl", jsonl_text(TWENTY[:3]) + '{"text": "no label"}\n' + jsonl_text(TWENTY[3:]),
                             ["missing label in column 'label'"], line="line 4"),
    "undeclared_label": Bad("reviews.csv", csv_text(TWENTY[:16]) + "typo,postive\n" + csv_text(TWENTY[16:]).split("\n", 1)[1],
                            ["label 'postive' is not one of: negative, positive", "data.labels"], line="line 18",
                            data={"labels": ["negative", "positive"]}),
    "single_class": Bad("reviews.csv", csv_text([(t, "positive") for t, _ in TWENTY]),
                        ["every example has the label 'positive'", "at least two classes"]),
    "regression_label_not_a_number": Bad("scores.csv", "text,label\n" + "".join(f"text {i},{i / 10}\n" for i in range(10))
                                         + "text x,high\n" + "".join(f"text {i},{i}\n" for i in range(10, 20)),
                                         ["label 'high' in column 'label' is not a number", "numeric targets"],
                                         line="line 12", task="regression"),
    "regression_label_not_finite": Bad("scores.jsonl", "".join(json.dumps({"text": f"t{i}", "label": i}) + "\n"
                                                               for i in range(10)) + '{"text": "x", "label": "nan"}\n',
                                       ["is not a finite number"], line="line 11", task="regression"),
    "unsupported_suffix": Bad("reviews.txt", csv_text(TWENTY), ["unsupported file type .txt", ".csv", ".jsonl",
                                                                ".json", ".parquet"]),
    "damaged_parquet": Bad("reviews.parquet", b"PAR1 this is not parquet", ["not a readable parquet file",
                                                                           "re-export it"]),
}

# A split with no examples: the message names the file and the setting.
EMPTY_SPLIT = Bad("reviews.csv", csv_text(rows(5)), ["data.split.test", "leaves the test split empty",
                                                     "add examples or change data.split.test"],
                  data={"split": {"test": 0.05}})


@pytest.fixture
def no_model(monkeypatch):
    """Data is validated before any model loads: reaching `fit` is a failure."""
    def fit(*args, **kwargs):
        pytest.fail("a model was loaded although the data is invalid")
    monkeypatch.setattr(api, "fit", fit)


def train_on(bad: Bad, tmp_path: Path, capsys) -> tuple[int, str, Path, Path]:
    """Write the case's file and config, run `tunelab train`; return (status, stderr, data path, output)."""
    data = tmp_path / bad.file
    if isinstance(bad.content, bytes):
        data.write_bytes(bad.content)
    elif bad.content is not None:
        data.write_text(bad.content, encoding="utf-8")
    config = {"task": bad.task, "model": "minilm", "data": {"source": str(data), **bad.data},
              "method": {"name": "lora"}, "train": {"epochs": 1}}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    output = tmp_path / "runs"
    status = main(["train", str(config_path), f"output={output}"])
    return status, capsys.readouterr().err, data, output


def assert_one_line_error(status: int, err: str, output: Path, says: list[str]) -> str:
    assert status == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    line = lines[0]
    assert line.startswith("error: "), line
    for fragment in says:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    # Nothing is written: no run folder and no `.NAME.partial-*` folder.
    assert not output.exists() or not any(output.iterdir()), list(output.iterdir())
    return line


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_data_ends_with_one_line(case: Bad, tmp_path, capsys, no_model):
    status, err, data, output = train_on(case, tmp_path, capsys)
    line = assert_one_line_error(status, err, output, case.says)
    # The file is named, with the line when one line is at fault.
    where = f"{data} {case.line}:" if case.line else str(data)
    assert where in line, f"{where!r} not in {line!r}"


def test_split_with_no_examples(tmp_path, capsys, no_model):
    status, err, _, output = train_on(EMPTY_SPLIT, tmp_path, capsys)
    assert_one_line_error(status, err, output, EMPTY_SPLIT.says)


def test_split_with_no_examples_names_the_file(tmp_path, capsys, no_model):
    _, err, data, _ = train_on(EMPTY_SPLIT, tmp_path, capsys)
    assert str(data) in err


def test_non_utf8_after_a_byte_order_mark(tmp_path, capsys, no_model):
    content = b"\xef\xbb\xbf" + csv_text(TWENTY[:5]).encode() + b"caf\xe9,positive\n" + \
        csv_text(TWENTY[5:]).split("\n", 1)[1].encode()
    status, err, data, output = train_on(Bad("reviews.csv", content, []), tmp_path, capsys)
    assert_one_line_error(status, err, output, [f"{data} line 7: byte 0xe9 is not UTF-8"])


@pytest.mark.parametrize("data", [{"max_examples": 1}, {"split": {"test": 0.8, "validation": 0.05}}],
                         ids=["max_examples-below-classes", "train-part-below-classes"])
def test_small_cuts_end_with_one_line(data, tmp_path, capsys, no_model):
    # 20 examples of two classes; for the last case 12 of three classes, so that 2 are left to train on.
    labelled = TWENTY if "max_examples" in data else [(t, "abc"[i % 3]) for i, (t, _) in enumerate(TWENTY[:12])]
    status, err, _, output = train_on(Bad("reviews.csv", csv_text(labelled), [], data=data), tmp_path, capsys)
    assert_one_line_error(status, err, output, [])


def test_bad_validation_file_is_named(tmp_path, capsys, no_model):
    validation = tmp_path / "validation.csv"
    validation.write_text(csv_text(rows(4)) + "bad,neutral\n")
    case = Bad("reviews.csv", csv_text(TWENTY), ["label 'neutral' is not one of the training labels"],
               data={"validation_file": str(validation)})
    status, err, _, output = train_on(case, tmp_path, capsys)
    line = assert_one_line_error(status, err, output, case.says)
    assert f"{validation} line 6:" in line


# --- good input through `load_splits` ------------------------------------------------------------------------

def write(path: Path, data: list[tuple[str, str]]) -> Path:
    records = [{"text": t, "label": label} for t, label in data]
    if path.suffix == ".csv":
        path.write_text(csv_text(data), encoding="utf-8")
    elif path.suffix == ".jsonl":
        path.write_text(jsonl_text(data), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def splits_of(source: Path, **data):
    cfg = load_config({"model": "minilm", "data": {"source": str(source), **data}})
    return load_splits(cfg.data, TASKS.get("classification"))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_each_file_type_loads(suffix, tmp_path):
    data = rows(50)
    splits = splits_of(write(tmp_path / f"reviews{suffix}", data), split={"validation": 0.2, "test": 0.1})
    assert splits.sizes() == {"train": 35, "validation": 10, "test": 5}
    assert splits.labels == ["negative", "positive"]
    loaded = {(e.text, e.label) for part in (splits.train, splits.validation, splits.test) for e in part}
    assert loaded == set(data)


def test_json_object_with_a_data_list(tmp_path):
    path = tmp_path / "reviews.json"
    path.write_text(json.dumps({"version": 1, "data": [{"text": t, "label": lb} for t, lb in rows(20)]}))
    assert sum(splits_of(path).sizes().values()) == 20


def test_numeric_labels_mean_the_same_in_every_format(tmp_path):
    csv_path = tmp_path / "n.csv"
    csv_path.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)))
    jsonl_path = tmp_path / "n.jsonl"
    jsonl_path.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(20)))
    assert splits_of(csv_path).labels == splits_of(jsonl_path).labels == ["0", "1"]


def test_columns_are_mapped(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review,stars\n" + "".join(f"{t},{lb}\n" for t, lb in rows(20)))
    splits = splits_of(path, columns={"text": "review", "label": "stars"})
    assert sum(splits.sizes().values()) == 20


def test_separate_validation_and_test_files_are_used_as_given(tmp_path):
    train = write(tmp_path / "train.csv", rows(30))
    validation = write(tmp_path / "validation.jsonl", rows(7, positive_every=3))
    test = write(tmp_path / "test.json", rows(9))
    splits = splits_of(train, validation_file=str(validation), test_file=str(test))
    assert splits.sizes() == {"train": 30, "validation": 7, "test": 9}
    assert [(e.text, e.label) for e in splits.validation] == rows(7, positive_every=3)
    assert [(e.text, e.label) for e in splits.test] == rows(9)
    assert sorted(e.text for e in splits.train) == sorted(t for t, _ in rows(30))


def test_only_the_missing_split_is_cut(tmp_path):
    train = write(tmp_path / "train.csv", rows(40))
    validation = write(tmp_path / "validation.csv", rows(6))
    splits = splits_of(train, validation_file=str(validation), split={"validation": 0.3, "test": 0.25})
    assert splits.sizes() == {"train": 30, "validation": 6, "test": 10}


def _texts(splits) -> tuple[list[str], list[str], list[str]]:
    return tuple([e.text for e in part] for part in (splits.train, splits.validation, splits.test))


def test_splits_are_deterministic_for_a_seed(tmp_path):
    path = write(tmp_path / "reviews.csv", rows(100))
    first = splits_of(path, split={"seed": 3})
    assert _texts(splits_of(path, split={"seed": 3})) == _texts(first)
    assert _texts(splits_of(path, split={"seed": 4})) != _texts(first)


def test_splits_are_stratified(tmp_path):
    path = write(tmp_path / "reviews.csv", rows(300, positive_every=4))  # 25% positive
    splits = splits_of(path, split={"validation": 0.2, "test": 0.2, "seed": 1})
    assert splits.sizes() == {"train": 180, "validation": 60, "test": 60}
    for part in (splits.train, splits.validation, splits.test):
        share = Counter(e.label for e in part)["positive"] / len(part)
        assert share == pytest.approx(0.25, abs=0.02)
    all_texts = [t for part in _texts(splits) for t in part]
    assert len(all_texts) == len(set(all_texts)) == 300  # disjoint and complete


def test_max_examples_keeps_a_stratified_subset(tmp_path):
    path = write(tmp_path / "reviews.csv", rows(400, positive_every=5))  # 20% positive
    splits = splits_of(path, max_examples=100, split={"validation": 0.1, "test": 0.1})
    assert sum(splits.sizes().values()) == 100
    counts = Counter(e.label for part in (splits.train, splits.validation, splits.test) for e in part)
    assert counts == {"positive": 20, "negative": 80}
    assert _texts(splits_of(path, max_examples=100, split={"validation": 0.1, "test": 0.1})) == _texts(splits)


def test_declared_labels_keep_their_order(tmp_path):
    path = write(tmp_path / "reviews.csv", rows(20))
    assert splits_of(path, labels=["positive", "negative"]).labels == ["positive", "negative"]
