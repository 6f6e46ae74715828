"""`tunelab export`: every export kind loads in a fresh process with plain transformers / peft (no tunelab import)
and predicts what tunelab predicted for the run's test split."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.api import train
from tunelab.cli import main
from tunelab.export import export

# Run in a fresh process that never imports tunelab: what a user of plain transformers / peft would write, following
# each export's README.md. Prints {export folder: [[label or text, logits or None], ...]}.
PLAIN = r'''
import json, sys
import numpy as np
import torch
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoTokenizer, pipeline)
jobs = json.loads(sys.argv[1])
out = {}
for job in jobs:
    folder, kind, texts = job["folder"], job["kind"], job["texts"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if kind == "peft":
        from peft import PeftModel
        config = AutoConfig.from_pretrained(folder)
        base = AutoModelForSequenceClassification.from_pretrained(job["base"], config=config)
        model = PeftModel.from_pretrained(base, folder).eval()
    elif kind in ("merged", "plain"):
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        classify = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None)
        piped = [max(r, key=lambda s: s["score"])["label"] for r in classify(texts)]
    if kind in ("peft", "merged", "plain"):
        rows = []
        with torch.no_grad():
            for text in texts:
                enc = tokenizer(text, truncation=True, max_length=job["max_length"], return_tensors="pt")
                logits = model(**enc).logits[0].tolist()
                rows.append([model.config.id2label[int(np.argmax(logits))], logits])
        if kind != "peft":
            assert [r[0] for r in rows] == piped, (rows, piped)
    elif kind == "causal":
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        rows = []
        for text in texts:  # the prompt as the export's README.md says tunelab wrote it
            if tokenizer.chat_template:
                ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
            else:
                ids = tokenizer(text.rstrip("\n") + "\n", add_special_tokens=False)["input_ids"]
                ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids
            ids = torch.tensor([ids])
            generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids))  # generation_config.json
            rows.append([tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True), None])
    elif kind == "prompt":  # prompt.json's `rule`, written out
        p = json.load(open(f"{folder}/prompt.json"))
        model = AutoModel.from_pretrained(job["base"]).eval()
        def embed(strings):
            enc = tokenizer(strings, truncation=True, max_length=p["max_length"], padding=True, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            v = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
            return v / np.linalg.norm(v, axis=-1, keepdims=True)
        norm = lambda m: m / np.linalg.norm(m, axis=-1, keepdims=True)
        fill = lambda t: p["template"].replace("{text}", t).replace("{description}", p["description"])
        d = norm(np.stack([embed([p["label_template"].replace("{label}", w) for w in p["label_words"][c]]).mean(0)
                           for c in p["labels"]]))
        x = embed([fill(t) for t in texts])
        s = x @ d.T
        if p["shots"]:
            protos = norm(np.stack([embed([fill(t) for t in p["demonstrations"][c]]).mean(0) for c in p["labels"]]))
            s = (1 - p["weight"]) * s + p["weight"] * (x @ protos.T)
        if p["calibration_bias"]:
            s = s - np.array(p["calibration_bias"])
        rows = [[p["labels"][int(i)], None] for i in s.argmax(1)]
    out[folder] = rows
print(json.dumps(out))
'''


def _plain(jobs: list[dict]) -> dict[str, list]:
    env = {**os.environ, "PYTHONPATH": ""}  # the checker must not be able to import tunelab's source tree
    done = subprocess.run([sys.executable, "-c", PLAIN, json.dumps(jobs)], capture_output=True, text=True,
                          env=env, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _predictions(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def test_every_export_loads_in_plain_transformers_with_tunelabs_predictions(tiny_config, tiny_generation_config,
                                                                            tiny_bert, tmp_path):
    out = tmp_path / "exports"
    jobs, expected = [], {}
    for method, merge, kind in [("lora", False, "peft"), ("lora", True, "merged"), ("ia3", True, "merged"),
                                ("full", False, "plain"), ("prompt", False, "prompt")]:
        cfg = tiny_config(method, name=method, **({"method__shots": [4]} if method == "prompt" else {}))
        run = Path(cfg["output"]) / method
        if not run.exists():
            train(cfg, log=lambda _: None)
        folder = export(run, out / f"{method}-{kind}", merge=merge, log=lambda _: None)
        rows = _predictions(run)
        jobs.append({"folder": str(folder), "kind": kind, "texts": [r["text"] for r in rows],
                     "base": str(tiny_bert), "max_length": 16})
        expected[str(folder)] = rows
        card = (folder / "README.md").read_text()
        assert "## How to load" in card and f"method: {method}" in card
        config = json.loads((folder / ("prompt.json" if kind == "prompt" else "config.json")).read_text())
        if kind != "prompt":
            assert config["id2label"] == {"0": "negative", "1": "positive"}, config.get("id2label")
        if kind == "peft":
            base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
            assert not Path(base).is_absolute() and ".venv" not in base, base

    gen = tiny_generation_config("lora")
    gen["name"] = "gen"
    train(gen, log=lambda _: None)
    gen_run = Path(gen["output"]) / "gen"
    folder = export(gen_run, out / "gen-merged", merge=True, log=lambda _: None)
    rows = _predictions(gen_run)
    jobs.append({"folder": str(folder), "kind": "causal", "texts": [r["prompt"] for r in rows]})
    expected[str(folder)] = [{"prediction": r["prediction"]} for r in rows]

    got = _plain(jobs)
    for folder, rows in expected.items():
        assert len(got[folder]) == len(rows)
        for (label, logits), row in zip(got[folder], rows):
            assert label == row["prediction"], (folder, label, row)
            if logits is not None:  # the same scores, to float precision (unpadded here, batched in tunelab)
                assert logits == pytest.approx(list(row["scores"].values()), abs=1e-5), (folder, logits, row)


def test_a_bottleneck_adapter_exports_its_own_folder_and_says_it_cannot_merge(tiny_config, tmp_path):
    cfg = tiny_config("adapter", name="adapter")
    train(cfg, log=lambda _: None)
    logs: list[str] = []
    folder = export(Path(cfg["output"]) / "adapter", tmp_path / "exported", merge=True, log=logs.append)
    assert any("cannot be merged" in line for line in logs), logs
    assert (folder / "README.md").read_text().count("tunelab predict") == 1
    assert sorted(p.name for p in folder.glob("*.safetensors"))  # the adapter's weights
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}


def test_export_refuses_to_overwrite_and_names_an_unfinished_run(tiny_config, tmp_path, capsys):
    cfg = tiny_config("full", name="full")
    train(cfg, log=lambda _: None)
    run = Path(cfg["output"]) / "full"
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    assert main(["export", str(run), str(tmp_path / "taken")]) == 2
    assert "exists already" in capsys.readouterr().err
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep me"
    assert main(["export", str(tmp_path), str(tmp_path / "x")]) == 2
    assert "not a tunelab run folder" in capsys.readouterr().err
    assert main(["export", str(run), str(tmp_path / "taken"), "--overwrite"]) == 0
    assert not (tmp_path / "taken" / "mine.txt").exists() and (tmp_path / "taken" / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial export left
