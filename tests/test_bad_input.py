"""A corpus of bad input — data files, configs, model folders — each run through `tunelab train` as a user would:
exit status 2, one line on stderr that names the file, row or key, no traceback, and nothing that existed before
changed or added to."""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tunelab.cli import main

from conftest import tiny_sentences
from conftest import with_changes as _with

Case = Callable[[Path, dict], tuple[dict, str]]  # (folder, a working config) → (the bad config, a phrase expected)
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def _csv(folder: Path, text: str, name: str = "data.csv") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def _good_rows(n: int = 40) -> str:
    return "text,label\n" + "".join(f"{t},{l}\n" for t, l in tiny_sentences(n))




# --- data files -----------------------------------------------------------------------------------------------

@case
def empty_csv(d, cfg):
    return _with(cfg, data__source=_csv(d, "")), "empty"


@case
def header_only_csv(d, cfg):
    return _with(cfg, data__source=_csv(d, "text,label\n")), "data.csv"


@case
def missing_label_column(d, cfg):
    return _with(cfg, data__source=_csv(d, "text,stars\n" + "a film,1\n" * 20)), "label"


@case
def tsv_named_csv(d, cfg):
    rows = "text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in tiny_sentences(40))
    return _with(cfg, data__source=_csv(d, rows)), "looks tab-separated"


@case
def float_labels_for_classification(d, cfg):
    rows = "text,label\n" + "".join(f"{t},{0.25 * i}\n" for i, (t, _) in enumerate(tiny_sentences(40)))
    return _with(cfg, data__source=_csv(d, rows)), "regression"


@case
def duplicate_column_names(d, cfg):
    rows = "text,label,text\n" + "".join(f"{t},{l},x\n" for t, l in tiny_sentences(40))
    return _with(cfg, data__source=_csv(d, rows)), "'text' more than once"


@case
def a_column_of_lists(d, cfg):
    path = d / "data.jsonl"
    path.write_text("".join(json.dumps({"text": [t], "label": l}) + "\n" for t, l in tiny_sentences(40)))
    return _with(cfg, data__source=str(path)), "line 1"


@case
def a_two_gigabyte_line(d, cfg):
    path = d / "data.csv"
    path.write_text(_good_rows() + "a film,")
    with path.open("r+b") as f:  # sparse: 2 GB of NUL bytes without a newline, taking no disk space
        f.truncate(path.stat().st_size + 2 * 2**30)
    return _with(cfg, data__source=str(path)), "line 42: the line is longer than 16 MB"


@case
def a_two_gigabyte_json_line(d, cfg):
    path = d / "data.jsonl"
    path.write_text('{"text": "a film", "label": "good"}\n{"text": "')
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size + 2 * 2**30)
    return _with(cfg, data__source=str(path)), "line 2: the line is longer than 16 MB"


@case
def broken_json_line(d, cfg):
    lines = [json.dumps({"text": t, "label": l}) for t, l in tiny_sentences(40)]
    lines[2] = lines[2][:-3]
    path = d / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return _with(cfg, data__source=str(path)), "line 3"


@case
def json_that_is_not_rows(d, cfg):
    path = d / "data.json"
    path.write_text(json.dumps({"text": "one film", "label": "positive"}))
    return _with(cfg, data__source=str(path)), "data.json"


@case
def damaged_parquet(d, cfg):
    path = d / "data.parquet"
    path.write_bytes(b"PAR1 not really")
    return _with(cfg, data__source=str(path)), "parquet"


@case
def a_folder_that_is_not_a_saved_dataset(d, cfg):
    (d / "folder").mkdir()
    return _with(cfg, data__source=str(d / "folder")), "save_to_disk"


@case
def missing_data_file(d, cfg):
    return _with(cfg, data__source=str(d / "nowhere.csv")), "nowhere.csv"


@case
def unsupported_suffix(d, cfg):
    return _with(cfg, data__source=_csv(d, _good_rows(), "data.txt")), ".txt"


@case
def not_utf8(d, cfg):
    path = d / "data.csv"
    path.write_bytes(b"text,label\n" + b"caf\xe9 film,positive\n" * 20)
    return _with(cfg, data__source=str(path)), "UTF-8"


@case
def an_empty_text_cell(d, cfg):
    rows = _good_rows().splitlines()
    rows[5] = ",positive"
    return _with(cfg, data__source=_csv(d, "\n".join(rows) + "\n")), "row"


@case
def a_single_label(d, cfg):
    rows = "text,label\n" + "".join(f"{t},positive\n" for t, _ in tiny_sentences(40))
    return _with(cfg, data__source=_csv(d, rows)), "label"


@case
def regression_label_that_is_not_a_number(d, cfg):
    rows = "text,label\n" + "".join(f"{t},{'high' if i == 7 else i}\n" for i, (t, _) in enumerate(tiny_sentences(40)))
    return _with(cfg, task="regression", data__source=_csv(d, rows)), "high"


@case
def a_validation_file_that_is_a_folder(d, cfg):
    (d / "valid").mkdir()
    return _with(cfg, data__validation_file=str(d / "valid")), "validation_file"


@case
def messages_without_an_assistant_turn(d, cfg):
    path = d / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}]}
            for i in range(20)]
    rows[4] = {"messages": [{"role": "user", "content": "alone"}]}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _with(cfg, task="generation", model=cfg["llama"], data__source=str(path)), "assistant"


@case
def translation_row_with_an_empty_target(d, cfg):
    path = d / "pairs.jsonl"
    rows = [{"source": f"hello {i}", "target": f"bonjour {i}"} for i in range(20)]
    rows[6]["target"] = ""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _with(cfg, task="generation", model=cfg["llama"], data__source=str(path)), "line 7"


@case
def squad_answer_outside_its_context(d, cfg):
    path = d / "qa.jsonl"
    rows = [{"question": f"Who is {i}?", "context": f"Ann is {i}.", "answers": {"text": ["Ann"], "answer_start": [0]}}
            for i in range(20)]
    rows[3]["answers"] = {"text": ["Bob"], "answer_start": [0]}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _with(cfg, task="extractive_qa", data__source=str(path), data__max_length=64), "Bob"


@case
def prompt_template_naming_a_missing_column(d, cfg):
    return _with(cfg, method={"name": "prompt", "templates": ["Review: {title}"]}), "{title}"


# --- model folders --------------------------------------------------------------------------------------------

@case
def a_model_folder_without_weights(d, cfg):
    model = d / "model"
    shutil.copytree(cfg["model"], model)
    for weights in model.glob("*.safetensors"):
        weights.unlink()
    return _with(cfg, model=str(model)), "weights"


@case
def a_tokenizer_from_another_model(d, cfg):
    from transformers import AutoTokenizer
    model = d / "model"
    shutil.copytree(cfg["model"], model)
    bigger = AutoTokenizer.from_pretrained(model)  # the tokenizer of a model with 5,000 more words
    bigger.add_tokens([f"word{i}" for i in range(5000)])
    bigger.save_pretrained(model)
    return _with(cfg, model=str(model)), "the tokenizer belongs to another model"


@case
def a_model_path_that_is_a_file(d, cfg):
    return _with(cfg, model=_csv(d, "x", "model.bin")), "model"


# --- configs: unknown keys at every level, wrong types, outputs -------------------------------------------------

@case
def unknown_top_level_key(d, cfg):
    return _with(cfg, trian={"epochs": 1}), "trian"


@case
def unknown_data_key(d, cfg):
    return _with(cfg, data__sourse="x"), "data.sourse"


@case
def unknown_nested_key(d, cfg):
    return _with(cfg, train__early_stopping__patiense=2), "train.early_stopping.patiense"


@case
def unknown_method_option(d, cfg):
    return _with(cfg, method={"name": "lora", "rank": 4}), "method.rank"


@case
def unknown_key_in_a_methods_block(d, cfg):
    return _with(cfg, methods={"lora": {"alhpa": 4}}), "methods.lora.alhpa"


@case
def unknown_key_in_a_task_block(d, cfg):
    return _with(cfg, generation={"max_tokens": 4}), "generation.max_tokens"


@case
def wrong_type(d, cfg):
    return _with(cfg, train__epochs="three"), "train.epochs"


@case
def output_is_a_file(d, cfg):
    return _with(cfg, output=_csv(d, "mine", "results.txt")), "results.txt"


@case
def output_under_a_file(d, cfg):
    return _with(cfg, output=str(Path(_csv(d, "mine", "results.txt")) / "runs")), "results.txt"


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its hash (an empty output folder made on the way counts for nothing)."""
    return {str(p.relative_to(folder)): _fingerprint(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > 2**26:  # the 2 GB cases' files: hashing them would take most of the corpus's time
        return f"{stat.st_size} bytes, changed {stat.st_mtime_ns}"
    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, tiny_config, tiny_llama, tmp_path, capsys):
    base = tiny_config("lora")
    base["llama"] = str(tiny_llama)  # for the generation cases; removed below
    bad, phrase = CASES[name](tmp_path, base)
    bad.pop("llama", None)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(bad))
    before = _snapshot(tmp_path)
    status = main(["train", str(config)])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert phrase in err, err
    assert _snapshot(tmp_path) == before, "a bad input changed or added files"


def test_the_corpus_has_at_least_thirty_cases():
    assert len(CASES) >= 30
