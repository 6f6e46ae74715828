"""`tunelab compare` with all four method families on SmolLM2, for each decoder task (small slices of the shipped
configs). Minutes each on two CPU cores, so outside the default run: `make test-all` runs them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tunelab.comparison import compare, table_rows

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not os.environ.get("TUNELAB_SLOW"),
                                                  reason="minutes on CPU; `make test-all` runs it")]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

SLICES = {  # config, overrides that keep it to a minute or two a method, the metric columns the table must show
    "sentiment": ("sentiment/smollm2_lora.yaml", ["data.max_examples=400", "methods.prompt.search_examples=40",
                                                  "methods.prompt.shots=[0]"],
                  ["test f1", "test accuracy"]),
    "chat": ("chat/smollm2_lora.yaml", ["data.max_examples=160", "data.max_length=64", "train.epochs=1",
                                        "generation.max_new_tokens=16", "methods.prompt.shots=[0]"],
             ["test perplexity", "test chrf", "test bleu", "test f1"]),  # the config's metric comes first
    "translation": ("translation/smollm2_lora.yaml", ["data.max_examples=120", "data.split.test=0.1",
                                                      "data.split.validation=0.1", "data.max_length=96",
                                                      "train.epochs=1",
                                                      "generation.max_new_tokens=24", "methods.prompt.shots=[0]",
                                                      "methods.prompt.search_examples=4"],
                    ["test chrf", "test bleu", "test f1", "test perplexity"]),
}


@pytest.mark.parametrize("task", SLICES)
def test_compare_runs_every_family_on_smollm2(task, tmp_path):
    config, overrides, columns = SLICES[task]
    result = compare(CONFIGS / config, ["prompt", "lora", "adapter", "full"],
                     overrides, output=tmp_path / "cmp", name=task,
                     log=lambda _: None)
    assert {r["method"]: r["status"] for r in result["rows"]} == dict.fromkeys(["prompt", "lora", "adapter",
                                                                                 "full"], "ok")
    assert table_rows(result)[0][2:2 + len(columns)] == columns
    assert result["recommendation"]["method"] in {"prompt", "lora", "adapter", "full"}
    assert (tmp_path / "cmp" / task / "report.html").is_file()
