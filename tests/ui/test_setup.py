"""The Setup tab's logic without a browser: options from the method registry, the config the form builds (which
`tunelab compare` accepts as it is), and the CLI's own lines for bad files."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import yaml

from conftest import tiny_sentences
from tunelab.methods import METHODS
from tunelab.settings import load_config
from tunelab.plan import method_config
from tunelab.ui import setup


def test_every_registered_method_option_is_offered_with_its_doc():
    offered = setup.method_options()
    assert sorted(offered) == sorted(METHODS.names())
    for name, method in METHODS.items():
        assert [key for key, _, _ in offered[name]] == [f.name for f in dataclasses.fields(method.Options)]
        assert all(doc for _, _, doc in offered[name])


def test_the_built_config_is_what_compare_reads(tmp_path, tiny_bert):
    data = tmp_path / "reviews.csv"
    data.write_text("sentence,sentiment\n" + "".join(f"{t},{label}\n" for t, label in tiny_sentences(40)))
    columns = setup.columns_of(data)
    assert columns == ["sentence", "sentiment"]
    mapping = setup.guess_columns("classification", columns)
    assert mapping == {"text": "sentence", "label": "sentiment", "text_pair": setup.NONE}
    cfg = setup.build("classification", str(tiny_bert), str(data), mapping, ["lora", "full"],
                      {"lora": {"r": "4", "alpha": "16.0"}}, epochs=1, batch_size=8, max_length=16)
    assert cfg["data"]["columns"] == {"text": "sentence", "label": "sentiment"}
    assert cfg["methods"] == {"lora": {"r": 4}}  # only what differs from the method's default
    assert setup.problem(cfg, ["lora", "full"]) is None
    text = setup.to_yaml(cfg, ["lora", "full"])
    assert yaml.safe_load(text) == cfg and text.startswith("# tunelab compare config.yaml --methods lora,full")
    lora = load_config(method_config(cfg, "lora", tmp_path))
    assert lora.method.options.r == 4 and lora.data.columns["text"] == "sentence"


def test_bad_files_get_the_cli_line(tmp_path, tiny_bert):
    for name, content in (("empty.csv", ""), ("one_column.csv", "review\nfine film\nbad film\n")):
        data = tmp_path / name
        data.write_text(content)
        cfg = setup.build("classification", str(tiny_bert), str(data), {"text": "review", "label": setup.NONE},
                          ["lora"])
        shown = setup.problem(cfg, ["lora"])
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        done = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", str(path)], capture_output=True,
                              text=True, cwd=tmp_path)
        assert done.returncode == 2 and shown == done.stderr.strip().splitlines()[-1]
    assert "the file is empty" in setup.problem(
        setup.build("classification", "minilm", str(tmp_path / "empty.csv"), {}, ["lora"]), ["lora"])
    assert setup.problem(setup.build("classification", "minilm", "rotten_tomatoes", {}, ["lroa"]), ["lroa"]) == \
        "error: --methods: unknown method 'lroa'; choose one of: adapter, full, ia3, lora, prompt"
