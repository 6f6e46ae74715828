"""The Playground's answers are `tunelab predict`'s, for a classifier and a generator; Export is `tunelab export`."""
from __future__ import annotations

import json
from pathlib import Path

from tunelab.api import predict, train
from tunelab.ui import playground


def test_answers_are_predict_rows_side_by_side_and_export_writes_the_folder(tiny_config, tiny_generation_config,
                                                                           tmp_path):
    classifier = Path(train(tiny_config("lora", train__epochs=1), log=lambda _: None)["run_folder"])
    generator = Path(train(tiny_generation_config("lora"), log=lambda _: None)["run_folder"])
    for run, text, column in ((classifier, "a great lovely film", "text"), (generator, "repeat red cat", "prompt")):
        [[name, shown, details]] = playground.answer([run], text)
        (tmp_path / "in.jsonl").write_text(json.dumps({column: text}) + "\n")
        predict(run, tmp_path / "in.jsonl", tmp_path / "out.jsonl", overwrite=True)
        expected = json.loads((tmp_path / "out.jsonl").read_text())
        assert name == run.name and shown == str(expected["prediction"])
        assert text not in details  # the input is not repeated as a detail
    out = playground.export_run(classifier, merge=True)
    assert out == classifier.parent.parent / "exports" / f"{classifier.name}-merged"
    assert (out / "README.md").is_file() and (out / "config.json").is_file()
