"""compare: one run per method on the same splits, failures recorded, finished runs reused."""
from __future__ import annotations

import json

import pytest

from tunelab.comparison import compare
from tunelab.errors import TunelabError
from tunelab.estimation import estimate


def test_compare_records_failures_and_reuses_finished_runs(tiny_config, tmp_path):
    cfg = tiny_config("lora")
    cfg["methods"] = {"full": {"freeze_layers": 99}}  # fails inside its own process
    logs: list[str] = []
    result = compare(cfg, ["lora", "full"], output=tmp_path / "cmp", name="c", log=logs.append)
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["lora"]["status"] == "ok" and rows["lora"]["test"]["f1"] >= 0
    assert rows["full"]["status"] == "failed"
    assert "freeze_layers` is 99 but the model has 2 layers" in rows["full"]["reason"]
    assert result["recommendation"]["method"] == "lora"
    saved = json.loads((tmp_path / "cmp" / "c" / "comparison.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    # Both runs saw the same splits.
    lora_metrics = json.loads((tmp_path / "cmp" / "c" / "runs" / "lora" / "metrics.json").read_text())
    assert lora_metrics["splits"] == {"train": 72, "validation": 24, "test": 24}

    logs.clear()
    again = compare(cfg, ["lora"], output=tmp_path / "cmp", name="c", log=logs.append)
    assert any("reusing the finished run" in line for line in logs)
    assert again["rows"][0]["test"] == rows["lora"]["test"]

    with pytest.raises(TunelabError, match=r"was trained with another config \(train.epochs 2 → 1\)"):
        compare(cfg, ["lora"], ["train.epochs=1"], output=tmp_path / "cmp", name="c", log=logs.append)
    # How often checkpoints are written changes nothing the run learned: the run is reused.
    logs.clear()
    compare(cfg, ["lora"], ["train.checkpoint_every=7"], output=tmp_path / "cmp", name="c", log=logs.append)
    assert any("reusing the finished run" in line for line in logs)

    # A run saved before an option existed (its config.yaml lacks the key) matches when the option is at its default.
    import yaml
    saved = tmp_path / "cmp" / "c" / "runs" / "lora" / "config.yaml"
    older = yaml.safe_load(saved.read_text())
    del older["train"]["scheduler"]
    saved.write_text(yaml.safe_dump(older, sort_keys=False))
    logs.clear()
    compare(cfg, ["lora"], output=tmp_path / "cmp", name="c", log=logs.append)
    assert any("reusing the finished run" in line for line in logs)


def test_a_prompt_run_with_default_shots_is_reused(tiny_config, tmp_path):
    """The prompt method resolves unset `shots` for itself; the run's config.yaml keeps them unset, as asked."""
    cfg = tiny_config("prompt")
    compare(cfg, ["prompt"], output=tmp_path / "cmp", name="p", log=lambda _: None)
    logs: list[str] = []
    compare(cfg, ["prompt"], output=tmp_path / "cmp", name="p", log=logs.append)
    assert any("reusing the finished run" in line for line in logs)
    prompt = json.loads((tmp_path / "cmp" / "p" / "runs" / "prompt" / "model" / "prompt.json").read_text())
    assert prompt["options"]["shots"] == [0, 4, 16, 64]


def test_estimate_reports_every_method(tiny_config):
    result = estimate(tiny_config("lora"), ["prompt", "lora", "full"], log=lambda _: None)
    rows = {r["method"]: r for r in result["methods"]}
    assert set(rows) == {"prompt", "lora", "full"}
    assert all(r["status"] == "ok" and r["fit_seconds"] > 0 and r["peak_memory_mb"] > 100 for r in rows.values())
    assert rows["prompt"]["trainable"] == 0 < rows["lora"]["trainable"] < rows["full"]["trainable"]
    assert result["n_train"] == 72 and result["assumptions"]


def test_package_functions_survive_submodule_imports():
    # Importing a submodule sets it as a package attribute: none may share a name with an API function.
    import tunelab
    import tunelab.api  # noqa: F401
    import tunelab.comparison  # noqa: F401
    import tunelab.estimation  # noqa: F401
    import tunelab.training.loop  # noqa: F401
    for name in ("train", "evaluate", "predict", "compare", "estimate", "load_config"):
        assert callable(getattr(tunelab, name)) and not isinstance(getattr(tunelab, name), type(tunelab)), name


@pytest.mark.long(seconds=8)
def test_compare_generation_shows_generation_metrics(tiny_generation_config, tmp_path):
    """All four families on a generation task: the table shows chrF, BLEU, F1 and perplexity, the report builds."""
    from tunelab.comparison import table_rows
    cfg = tiny_generation_config()
    cfg["methods"] = {"prompt": {"shots": [0, 1]}}
    result = compare(cfg, ["prompt", "lora", "adapter", "full"], output=tmp_path / "cmp", name="gen",
                     log=lambda _: None)
    assert [r["status"] for r in result["rows"]] == ["ok"] * 4
    header = table_rows(result)[0]
    assert header[2:6] == ["test chrf (± 90% interval)", "test bleu", "test f1", "test perplexity"]
    prompt = next(r for r in result["rows"] if r["method"] == "prompt")
    assert prompt["parameters"]["trainable"] == 0 and prompt["test"]["perplexity"] > 1
    html = (tmp_path / "cmp" / "gen" / "report.html").read_text()
    assert "test perplexity" in html and "Prompt search: prompt" in html and "demonstrations" in html
    estimates = estimate(cfg, ["prompt", "lora"])
    assert all(r["status"] == "ok" and r["fit_seconds"] > 0 for r in estimates["methods"])


def test_a_method_may_replace_shared_train_settings():
    from pathlib import Path

    from tunelab.comparison import method_config
    base = {"task": "classification", "method": {"name": "lora", "r": 4},
            "train": {"learning_rate": 1e-3, "epochs": 2, "early_stopping": {"metric": "loss", "patience": 2}},
            "methods": {"full": {"freeze_layers": 1,
                                 "train": {"learning_rate": 5e-5, "early_stopping": {"patience": 0}}}}}
    shared = {"learning_rate": 1e-3, "epochs": 2, "early_stopping": {"metric": "loss", "patience": 2}}
    full = method_config(base, "full", Path("x"))
    assert full["method"] == {"name": "full", "freeze_layers": 1}
    assert full["train"] == {"learning_rate": 5e-5, "epochs": 2, "early_stopping": {"metric": "loss", "patience": 0}}
    lora = method_config(base, "lora", Path("x"))
    assert lora["method"] == {"name": "lora", "r": 4} and lora["train"] == shared
    assert base["train"] == shared  # the shared config is not changed


def test_a_methods_train_block_is_checked_like_train(tiny_config):
    from tunelab.settings import load_config
    from tunelab.errors import ConfigError
    cfg = tiny_config("lora")
    cfg["methods"] = {"full": {"freeze_layers": 1, "train": {"learning_rate": 5e-5}}}
    assert load_config(cfg).methods["full"]["train"] == {"learning_rate": 5e-5}
    cfg["methods"]["full"]["train"] = {"learning_rat": 5e-5}
    with pytest.raises(ConfigError, match=r"unknown key `methods.full.train.learning_rat`; valid keys: epochs"):
        load_config(cfg)


def test_an_interrupted_comparison_stops_the_method_and_leaves_no_temporary_config(tiny_config, tmp_path,
                                                                                    monkeypatch):
    """Ctrl-C (or SIGTERM, which the CLI turns into the same unwinding) while a method trains."""
    import subprocess

    class Training:  # the method's process, interrupted while it prints
        terminated = False

        def __init__(self, *args, **kwargs):
            self.stdout = self._lines()

        def _lines(self):
            yield "epoch 1/1: step 1/8\n"
            raise KeyboardInterrupt

        def terminate(self):
            Training.terminated = True

        def wait(self):
            return -15

    monkeypatch.setattr(subprocess, "Popen", Training)
    with pytest.raises(KeyboardInterrupt):
        compare(tiny_config("lora"), ["lora"], output=tmp_path / "cmp", name="c", log=lambda _: None)
    runs = tmp_path / "cmp" / "c" / "runs"
    assert Training.terminated and not list(runs.glob(".*.yaml")), list(runs.iterdir())


@pytest.mark.long(seconds=4)
def test_a_comparison_resumes_a_method_interrupted_in_an_earlier_one(tiny_config, tmp_path, monkeypatch):
    """The first comparison was killed while LoRA trained: running it again goes on from LoRA's checkpoint."""
    import torch

    from tunelab.api import train
    from tunelab.comparison import method_config
    base = tiny_config("lora")
    base["train"]["checkpoint_every"] = 4
    folder = tmp_path / "cmp" / "c"
    real = torch.optim.AdamW.step

    def killed_at_step_7(self, *args, **kwargs):
        if killed_at_step_7.steps == 6:
            raise KeyboardInterrupt
        killed_at_step_7.steps += 1
        return real(self, *args, **kwargs)
    killed_at_step_7.steps = 0
    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", killed_at_step_7)
        with pytest.raises(KeyboardInterrupt):
            train(method_config(base, "lora", folder), log=lambda _: None)
    assert (folder / "runs" / ".lora.checkpoint").is_dir()
    logs: list[str] = []
    result = compare(base, ["lora"], output=tmp_path / "cmp", name="c", log=logs.append)
    assert result["rows"][0]["status"] == "ok", result["rows"][0]
    assert any("resuming from its checkpoint" in line for line in logs), logs
    assert any("resumed from the checkpoint at step 4 of 18" in line for line in logs), logs
    metrics = json.loads((folder / "runs" / "lora" / "metrics.json").read_text())
    assert metrics["resumed_at_step"] == 4
    assert not (folder / "runs" / ".lora.checkpoint").exists()


@pytest.mark.long(seconds=18)
def test_compare_with_seeds_and_a_search_reports_means_spreads_intervals_and_trials(tiny_config, tmp_path):
    """`--seeds 2 --tune 2`: each trained method is searched, then its best setting runs on two seeds; the prompt
    runs once. Figures carry their spread and bootstrap intervals; the seed-0 run reproduces the best trial."""
    import numpy as np
    import yaml

    from tunelab.comparison import table_rows
    cfg = tiny_config("lora", train__epochs=6, train__learning_rate=1e-3)
    cfg["tune"] = {"space": {"full": {"learning_rate": {"choices": [1e-7, 3e-3]}}}}
    logs: list[str] = []
    result = compare(cfg, ["prompt", "full"], ["compare.seeds=2", "tune.trials=2"], output=tmp_path / "cmp",
                     log=logs.append)
    folder = tmp_path / "cmp" / result["name"]
    assert result["name"].endswith("-tuned") and result["seeds"] == [0, 1] and result["confidence"] == 0.9
    rows = {r["method"]: r for r in result["rows"]}
    assert [r["seed"] for r in rows["full"]["runs"]] == [0, 1] and len(rows["prompt"]["runs"]) == 1
    assert (folder / "runs" / "full-seed1" / "metrics.json").is_file()
    f1s = [r["validation"]["f1"] for r in rows["full"]["runs"]]
    assert rows["full"]["validation"]["f1"] == pytest.approx(np.mean(f1s))
    assert rows["full"]["spread"]["validation"]["f1"] == pytest.approx(np.std(f1s, ddof=1))
    assert rows["prompt"]["spread"] is None and rows["prompt"]["tuning"] is None
    tuning = rows["full"]["tuning"]
    assert [t["params"]["learning_rate"] for t in tuning["trials"]][0] == 1e-3  # the untuned setting first
    best = tuning["best"]
    trained = yaml.safe_load((folder / "runs" / "full" / "config.yaml").read_text())
    assert trained["train"]["learning_rate"] == best["params"]["learning_rate"]
    assert rows["full"]["runs"][0]["validation"]["f1"] == pytest.approx(best["value"], abs=1e-9)
    # The first seed's run is the best trial's own model: the search kept it, nothing trained it twice.
    import json
    assert json.loads((folder / "runs" / "full" / "metrics.json").read_text())["from_trial"] == best["number"]
    assert rows["full"]["parameters"]["trainable"] == rows["full"]["parameters"]["total"]
    for row in rows.values():
        for split in ("validation", "test"):
            lo, hi = row["interval"][split]
            assert lo <= hi and 0 <= lo and hi <= 1
    assert result["sizes"] == {"validation": 24, "test": 24}
    assert set(result["recommendation"]["tied"]) <= {"prompt", "full"}
    header = table_rows(result)[0]
    assert "test f1 (mean ± sd, 2 seeds)" in header
    html = (folder / "report.html").read_text()
    assert "trial" in html.lower()
    # Run again: every run and the search are reused, nothing trains.
    logs.clear()
    again = compare(cfg, ["prompt", "full"], ["compare.seeds=2", "tune.trials=2"], output=tmp_path / "cmp",
                    log=logs.append)
    assert sum("reusing the finished run" in line for line in logs) == 3
    assert not any("trials to run" in line for line in logs)  # the search had ended: no trial runs again
    assert again["recommendation"] == result["recommendation"]


def test_one_seed_shows_bootstrap_half_widths_and_paired_differences(tiny_config, tmp_path):
    from tunelab.comparison import table_rows
    result = compare(tiny_config("lora"), ["prompt", "lora"], output=tmp_path / "cmp", name="one",
                     log=lambda _: None)
    rows = table_rows(result)
    assert rows[0][2] == "test f1 (± 90% interval)"
    best = result["recommendation"]["best"]
    assert f"validation f1 − {best}'s (90% paired interval)" in rows[0]
    other = next(r for r in result["rows"] if r["method"] != best)
    d = other["difference"]["validation"]
    assert d["interval"][0] <= d["value"] <= d["interval"][1]
    cells = next(r for r in rows if r[0] == other["method"])
    assert f"{d['value']:+.4f} [" in " ".join(cells) and "±" in cells[2]


def test_the_configs_output_governs_where_a_comparison_goes(tiny_config, tmp_path, monkeypatch):
    from pathlib import Path

    from tunelab.comparison import comparisons_folder
    from tunelab.settings import load_config
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config("full", train__epochs=1)
    cfg["output"] = str(tmp_path / "mine")
    result = compare(cfg, ["full"], name="p", log=lambda _: None)  # no --output: the config's output
    assert Path(result["folder"]) == tmp_path / "mine" / "p" and (tmp_path / "mine" / "p" / "report.html").is_file()
    unset = {k: v for k, v in cfg.items() if k != "output"}
    assert comparisons_folder(unset, unset) == "comparisons"
    assert comparisons_folder(load_config(unset), {}) == "comparisons"  # a RunConfig at the default
    assert comparisons_folder(load_config(cfg), {}) == str(tmp_path / "mine")


@pytest.mark.long(seconds=8)
def test_parallel_methods_train_at_once_and_give_the_sequential_table(tiny_config, tmp_path):
    import os
    from pathlib import Path

    from tunelab.comparison import table_rows
    from tunelab.workers import slots
    cfg = tiny_config("full", train__epochs=3)
    one = compare(cfg, ["lora", "full"], output=tmp_path / "cmp", name="one", log=lambda _: None)
    logs: list[str] = []
    two = compare(cfg, ["lora", "full"], output=tmp_path / "cmp", name="two", parallel=2, log=logs.append)
    # Other thread counts sum in another order: the same metrics to float precision, the same table.
    for a, b in zip(one["rows"], two["rows"], strict=True):
        assert a["method"] == b["method"] and a["test"] == pytest.approx(b["test"], abs=1e-4)
    # The same table, less the columns of time, memory and speed (and of the saved size, beside them).
    assert [r[:-4] for r in table_rows(one)] == [r[:-4] for r in table_rows(two)]
    # Both started before either finished: the second method began while the first one's process still ran.
    started = next(i for i, line in enumerate(logs) if line.startswith("[2/2] full"))
    finished = next(i for i, line in enumerate(logs) if line.startswith("[lora] saved to"))
    assert started < finished, logs
    assert any(line.startswith("[lora] ") for line in logs) and any(line.startswith("[full] ") for line in logs)
    assert slots(2)[0]["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert slots(devices=["0", "1"]) == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
