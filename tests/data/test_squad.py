"""Extractive QA data: SQuAD v1.1 files and flat rows load; bad files end `tunelab train` with one line."""
from __future__ import annotations

import copy
import fnmatch
import json
import tomllib
from pathlib import Path

import pytest
import yaml

from tunelab import api
from tunelab.cli import main
from tunelab.settings import load_config
from tunelab.data import DATASETS, load_splits, rows_to_examples
from tunelab.data.files import read_rows
from tunelab.errors import ConfigError, DataError
from tunelab.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = "Halvorsen & Tay began in 1874 as a tea stall in Marrowgate. Its best blend was Harbour Grey."


def squad(n_articles: int = 10) -> dict:
    """A valid SQuAD v1.1 document: one paragraph and two questions per article."""
    articles = []
    for a in range(n_articles):
        context = f"Article {a}. " + CONTEXT
        qas = [{"id": f"a{a}-year", "question": "When did it begin?",
                "answers": [{"text": "1874", "answer_start": context.index("1874")}]},
               {"id": f"a{a}-blend", "question": "What was the best blend?",
                "answers": [{"text": "Harbour Grey", "answer_start": context.index("Harbour Grey")},
                            {"text": "Grey", "answer_start": context.index("Grey")}]}]
        articles.append({"title": f"t{a}", "paragraphs": [{"context": context, "qas": qas}]})
    return {"version": "1.1", "data": articles}


def qa_config(source: Path, **data) -> dict:
    return {"task": "extractive_qa", "model": "minilm", "data": {"source": str(source), **data},
            "method": {"name": "lora"}, "train": {"epochs": 1}}


def test_a_squad_file_gives_one_example_per_question(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(squad(1)))
    cfg = load_config(qa_config(path))
    year, blend = rows_to_examples(read_rows(path), cfg.data, TASKS.get("extractive_qa"))
    assert (year.text, year.label, year.answers) == ("When did it begin?", "1874", [("1874", 36)])
    assert year.text_pair == blend.text_pair == "Article 0. " + CONTEXT
    assert blend.answers == [("Harbour Grey", 90), ("Grey", 98)] and blend.label == "Harbour Grey"
    assert year.group == blend.group == year.text_pair
    assert blend.origin == f"{path} question id 'a0-blend'"


def test_flat_rows_in_the_hugging_face_layout_and_rows_without_answers(tmp_path):
    path = tmp_path / "qa.jsonl"
    start = CONTEXT.index("1874")
    path.write_text(json.dumps({"id": "x", "question": "When?", "context": CONTEXT,
                                "answers": {"text": ["1874"], "answer_start": [start]}}) + "\n" +
                    json.dumps({"question": "Who?", "context": CONTEXT}) + "\n")
    cfg = load_config(qa_config(path))
    with_answer, without = rows_to_examples(read_rows(path), cfg.data, TASKS.get("extractive_qa"), need_label=False)
    assert with_answer.answers == [("1874", start)] and with_answer.origin == f"{path} line 1"
    assert without.answers is None and without.label is None


def test_unanswerable_questions_of_squad_v2_files_and_rows(tmp_path):
    """v2 articles (`is_impossible`, answers [] and `plausible_answers`) and Hugging Face `squad_v2` rows (empty
    lists) load as answers [] and label "" (v2's empty answer); rows only to be answered keep None."""
    document = squad(1)
    document["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "a0-owner", "question": "Who owns it now?", "is_impossible": True, "answers": [],
         "plausible_answers": [{"text": "Tay", "answer_start": 20}]})
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(document))
    cfg = load_config(qa_config(path))
    year, blend, owner = rows_to_examples(read_rows(path), cfg.data, TASKS.get("extractive_qa"))
    assert year.answers == [("1874", 36)] and (owner.answers, owner.label) == ([], "")
    rows = tmp_path / "qa.jsonl"
    rows.write_text(json.dumps({"question": "Who?", "context": CONTEXT, "answers": {"text": [], "answer_start": []}})
                    + "\n")
    (unanswerable,) = rows_to_examples(read_rows(rows), cfg.data, TASKS.get("extractive_qa"))
    assert unanswerable.answers == [] and unanswerable.label == ""
    (to_answer,) = rows_to_examples(read_rows(rows), cfg.data, TASKS.get("extractive_qa"), need_label=False)
    assert to_answer.answers is None


def test_rows_without_an_answers_column_are_an_error_not_unanswerable(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "When?", "context": CONTEXT, "answer": "1874"}) + "\n")
    cfg = load_config(qa_config(path))
    with pytest.raises(DataError) as info:
        rows_to_examples(read_rows(path), cfg.data, TASKS.get("extractive_qa"))
    assert str(info.value) == (f"{path} line 1: no 'answers' (keys: question, context, answer); add the answers, or "
                               f"name their column with data.columns.answers")


def test_one_context_never_straddles_two_splits(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(squad(20)))
    splits = load_splits(load_config(qa_config(path, split={"validation": 0.2, "test": 0.2})).data, TASKS.get("extractive_qa"))
    assert splits.sizes() == {"train": 24, "validation": 8, "test": 8}
    contexts = [{e.group for e in part} for part in (splits.train, splits.validation, splits.test)]
    assert not contexts[0] & contexts[1] and not contexts[0] & contexts[2] and not contexts[1] & contexts[2]


# --- bad files through the CLI -------------------------------------------------------------------------------

def broken(change) -> dict:
    document = copy.deepcopy(squad())
    change(document["data"][1]["paragraphs"][0])
    return document


BAD = {
    "answer_not_at_its_offset": (broken(lambda p: p["qas"][1]["answers"][0].update(answer_start=20)),
                                 ["question id 'a1-blend' answer 1", "answer 'Harbour Grey' does not match the "
                                  "context at answer_start 20", "set answer_start to 90"]),
    "answer_not_in_the_context": (broken(lambda p: p["qas"][0]["answers"][0].update(text="1875")),
                                  ["question id 'a1-year'", "does not occur in the context", "copy it exactly"]),
    "missing_question": (broken(lambda p: p["qas"][0].pop("question")),
                         ["question id 'a1-year'", "'question' is missing"]),
    "no_answers": (broken(lambda p: p["qas"][1].update(answers=[])),  # in a v1 file: a mistake, said so
                   ["question id 'a1-blend'", "has no answer", "set extractive_qa.allow_unanswerable: true",
                    "or give it an answer from the context"]),
    "answers_key_missing": (broken(lambda p: p["qas"][1].pop("answers")),
                            ["question id 'a1-blend'", "no 'answers'", "\"is_impossible\": true"]),
    "answer_without_offset": (broken(lambda p: p["qas"][0]["answers"][0].pop("answer_start")),
                              ["question id 'a1-year' answer 1", "needs 'text' and 'answer_start'"]),
    "offset_not_a_number": (broken(lambda p: p["qas"][0]["answers"][0].update(answer_start="36")),
                            ["'answer_start' must be a character offset", "got '36'"]),
    "question_without_id": (broken(lambda p: [p["qas"][1].pop("id"), p["qas"][1].pop("question")]),
                            ["article 2 paragraph 1 question 2", "'question' is missing"]),
    "missing_context": (broken(lambda p: p.pop("context")),
                        ["article 2 paragraph 1", "'context' is missing"]),
    "unanswerable_v2_question": (broken(lambda p: p["qas"][0].update(is_impossible=True, answers=[])),
                                 ["question id 'a1-year'", "SQuAD v2", "allow_unanswerable: true"]),
    "impossible_with_answers": (broken(lambda p: p["qas"][0].update(is_impossible=True)),
                                ["question id 'a1-year'", "'is_impossible' is true but the question has answers"]),
    "paragraphs_not_a_list": ({"data": [{"title": "t", "paragraphs": "oops"}]},
                              ["article 1", "'paragraphs' must be a non-empty list", "a SQuAD file looks like"]),
    "neither_squad_nor_rows": ({"data": [{"title": "t", "text": "no paragraphs"}]},
                               ["item 1", "no 'question'", "give a SQuAD file"]),
}


@pytest.fixture
def no_model(monkeypatch):
    """Data is validated before any model loads: reaching `fit` is a failure."""
    monkeypatch.setattr(api, "fit", lambda *a, **k: pytest.fail("a model was loaded although the data is invalid"))


@pytest.mark.parametrize("document,says", BAD.values(), ids=BAD.keys())
def test_a_bad_squad_file_ends_with_one_line_and_no_run_folder(document, says, tmp_path, capsys, no_model):
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(document))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(qa_config(data)))
    output = tmp_path / "runs"
    assert main(["train", str(config), f"output={output}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith(f"error: {data}"), err
    for fragment in says:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert not output.exists() or not any(output.iterdir())


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError) as info:
        load_config({"task": "extractive_qa", "data": {"source": "rotten_tomatoes"}})
    assert "'rotten_tomatoes' is a classification dataset, not one for task 'extractive_qa'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config({"task": "extractive_qa", "data": {"source": "tunelab_qa"}, "method": {"name": "prompt"}})
    assert "method 'prompt' does not support task 'extractive_qa'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config({"task": "extractive_qa", "data": {"source": "tunelab_qa", "max_length": 64},
                     "extractive_qa": {"doc_stride": 64}})
    assert "`extractive_qa.doc_stride` 64 must be smaller than `data.max_length` 64" in str(info.value)


# --- the built-in dataset ------------------------------------------------------------------------------------

def test_builtin_tunelab_qa_has_verified_spans_on_many_passages():
    examples = DATASETS.get("tunelab_qa").load()
    contexts = {e.text_pair for e in examples}
    assert len(contexts) >= 60 and len(examples) >= 180
    for e in examples:
        for text, start in e.answers:
            assert e.text_pair[start:start + len(text)] == text, e.origin
    assert sum(len(c.split()) > 200 for c in contexts) >= 3, "long passages make windows matter"
    origins = [e.origin for e in examples]
    assert len(set(origins)) == len(origins) and origins[0].startswith("tunelab_qa question id ")
    splits = load_splits(load_config({"task": "extractive_qa", "data": {"source": "tunelab_qa"}}).data, TASKS.get("extractive_qa"))
    assert not {e.group for e in splits.train} & {e.group for e in splits.test}


def test_builtin_tunelab_qa_ships_as_package_data():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = ROOT / "src" / "tunelab" / "data" / "qa" / "tunelab_qa.json"
    assert shipped.is_file()
    relative = shipped.relative_to(ROOT / "src" / "tunelab").as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in package_data["tunelab"])
