"""tune: an Optuna search per method on the validation split, seeded, pruned, resumable after a kill."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from tunelab.api import tune
from tunelab.settings import load_config
from tunelab.errors import ConfigError
from tunelab.tune import default_space, search, space_for, with_params

BAD, GOOD = 1e-7, 3e-3  # on the tiny data, a rate of 1e-7 learns nothing in ten epochs; 3e-3 learns the words


def test_the_search_finds_the_better_learning_rate_and_the_best_setting_is_trained(tiny_config, tmp_path):
    cfg = tiny_config("full", train__learning_rate=BAD, train__epochs=10,
                      tune={"space": {"full": {"learning_rate": {"choices": [BAD, GOOD]}}}})
    logs: list[str] = []
    result = tune(cfg, trials=3, log=logs.append)
    trials = result["trials"]
    assert len(trials) == 3 and trials[0]["default"] and trials[0]["params"] == {"learning_rate": BAD}
    assert result["best"]["params"] == {"learning_rate": GOOD}
    assert result["best"]["value"] > result["default"]["value"] + 0.2, result
    # The run of the best setting is the one that predicts the test split, and it reproduces the best trial.
    assert result["test"]["f1"] > 0.7
    trained = load_config(yaml.safe_load(open(f"{result['run_folder']}/config.yaml")))
    assert trained.train.learning_rate == GOOD
    import json
    validation = json.loads(open(f"{result['run_folder']}/metrics.json").read())["validation"]
    assert validation["f1"] == pytest.approx(result["best"]["value"], abs=1e-9)
    assert any(line.startswith("best: trial") and "train.learning_rate=0.003" in line for line in logs)
    # ... and it is the best trial's own model, kept by the search, not a second training of its setting.
    metrics = json.loads(open(f"{result['run_folder']}/metrics.json").read())
    assert metrics["from_trial"] == result["best"]["number"]
    assert any("not trained again" in line for line in logs)
    assert not any(line.startswith("epoch ") for line in logs[logs.index(next(
        line for line in logs if line.startswith("best: trial"))):])
    assert metrics["epochs_run"] == 10 and metrics["time"]["fit_seconds"] > 0
    # The weights it trained, as a run that trains them counts them (not as the reloaded model shows them).
    assert metrics["parameters"]["trainable"] == metrics["parameters"]["total"] > 0  # full fine-tuning: all
    history = [json.loads(line) for line in open(f"{result['run_folder']}/history.jsonl")]
    assert sum("validation_f1" in h for h in history) == 10


def test_a_trial_below_the_others_is_pruned_within_its_first_epoch(tiny_config, tmp_path):
    cfg = load_config(tiny_config("full", train__learning_rate=GOOD, train__epochs=10,
                                  tune={"space": {"full": {"learning_rate": {"choices": [BAD, GOOD]}}}}))
    storage = tmp_path / "t.db"
    import optuna
    search(cfg, 1, storage, log=lambda _: None)  # three trials of the good rate learn the task (the untuned first)
    study = optuna.load_study(study_name="full", storage=f"sqlite:///{storage}")
    for _ in range(2):  # enqueued rather than drawn: which rate a trial draws depends on the seed
        study.enqueue_trial({"learning_rate": GOOD})
    search(cfg, 3, storage, log=lambda _: None)
    study.enqueue_trial({"learning_rate": BAD})
    result = search(cfg, 4, storage, log=lambda _: None)
    assert [t["state"] for t in result["trials"][:3]] == ["COMPLETE"] * 3
    last = result["trials"][-1]
    # Successive halving judges a trial at its rungs, a third of the first epoch times powers of 3 (1/3, 1, 3, 9
    # epochs): at one of them it was not among the best third of the trials that got as far, so it stopped there,
    # not after its 10 epochs. (On the tiny data every rate scores alike for the first epoch: ties go on.)
    assert last["params"] == {"learning_rate": BAD} and last["state"] == "PRUNED" and last["epochs"] in (0.33, 1, 3)


# Warm processes (tests/warm): the search killed is the stand-in, whose forked child kills itself within
# milliseconds; `communicate()` returns once that child has closed the pipe it writes to, so the resume finds its
# trial's process gone, as after a cold SIGKILL.
@pytest.mark.long(seconds=21)
def test_a_killed_search_resumes_and_runs_the_interrupted_trial_again(tiny_config, tmp_path):
    cfg = tiny_config("full", train__epochs=10,
                      tune={"space": {"full": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}}})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    storage = tmp_path / "search.db"
    command = [sys.executable, "-m", "tunelab.cli", "tune", str(path), "--trials", "4", "--storage", str(storage),
               "--search-only"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and _states(storage).count("COMPLETE") < 2:  # kill it during the third trial
        time.sleep(0.05)
    while time.time() < deadline and not _running_has_reported(storage):  # mid-training, its setting drawn
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    before = _states(storage)
    assert before.count("COMPLETE") == 2 and before.count("RUNNING") == 1, before

    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import optuna
    study = optuna.load_study(study_name="full", storage=f"sqlite:///{storage}")
    trials = study.get_trials()
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) == 1 and interrupted[0].state.name == "FAIL"
    ended = [t for t in trials if not t.user_attrs.get("interrupted")]
    assert len(ended) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in ended)
    # The two finished trials were kept, not run again; the interrupted setting ran again, right after them.
    assert [t.number for t in ended[:2]] == [0, 1]
    assert ended[2].params == interrupted[0].params
    assert "2 of 4 trials to run" in done.stdout


def _running_has_reported(storage) -> bool:
    try:
        with sqlite3.connect(storage) as db:
            return bool(db.execute("select count(*) from trial_intermediate_values v join trials t "
                                   "on v.trial_id = t.trial_id where t.state = 'RUNNING'").fetchone()[0])
    except sqlite3.OperationalError:
        return False


def _states(storage) -> list[str]:
    if not storage.exists():
        return []
    try:
        with sqlite3.connect(storage) as db:
            return [row[0] for row in db.execute("select state from trials order by number")]
    except sqlite3.OperationalError:  # the tables are not made yet
        return []


def test_a_search_resumes_only_with_the_config_it_began_with(tiny_config, tmp_path):
    cfg = load_config(tiny_config("full", train__epochs=1))
    search(cfg, 1, tmp_path / "s.db", log=lambda _: None)
    changed = load_config(tiny_config("full", train__epochs=2))
    with pytest.raises(Exception, match=r"another config \(config.train.epochs 1 → 2\)"):
        search(changed, 1, tmp_path / "s.db", log=lambda _: None)
    # Asking for more trials (or other comparison settings) goes on with the same search.
    more = load_config(tiny_config("full", train__epochs=1, tune={"trials": 5}, compare={"seeds": 3}))
    assert len(search(more, 2, tmp_path / "s.db", log=lambda _: None)["trials"]) == 2


def test_default_spaces_centre_on_each_method_default_and_include_the_untuned_setting(tiny_config):
    lora = default_space("lora")
    assert lora["learning_rate"]["log"] and lora["learning_rate"]["low"] == pytest.approx(5e-4 / 10 ** 0.75)
    assert lora["learning_rate"]["high"] / lora["learning_rate"]["low"] == pytest.approx(10 ** 1.5)
    assert set(lora) == {"learning_rate", "r", "alpha"}
    assert set(default_space("adapter")) == {"learning_rate", "reduction_factor"}
    assert set(default_space("full")) == {"learning_rate", "freeze_layers"}
    # An untuned setting outside the default space is added to it: the first trial runs it.
    cfg = load_config(tiny_config("lora", method__r=32, train__learning_rate=0.05))
    space = space_for(cfg)
    assert 32 in space["r"]["choices"] and space["learning_rate"]["high"] == 0.05
    assert with_params(cfg.to_dict(), {"r": 4, "learning_rate": 1e-3})["method"]["r"] == 4


def test_a_wrong_search_space_is_one_error_naming_every_key(tiny_config):
    cfg = tiny_config("lora", tune={"space": {"lora": {"rank": {"choices": [4]}, "learning_rate": {"low": 1}},
                                              "prompt": {"shots": {"choices": [0]}}, "lroa": {}}})
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    text = str(e.value)
    assert "`tune.space.lora`.rank: not a parameter of lora" in text
    assert "`tune.space.lora`.learning_rate must be {low, high, log}" in text
    assert "`tune.space.prompt`: prompt trains nothing" in text
    assert "`tune.space.lroa`: unknown method 'lroa'" in text


def test_the_run_of_a_kept_trial_counts_the_weights_that_trained(tiny_config, tmp_path):
    """peft reloads LoRA's weights frozen: the run of the best trial must count what the trial trained, as a
    trained run does, not what the reloaded model shows (the demo's table once said LoRA trains 0 weights)."""
    import json
    result = tune(tiny_config("lora", train__epochs=1), trials=1, log=lambda _: None)
    metrics = json.loads(open(f"{result['run_folder']}/metrics.json").read())
    from tunelab.api import train
    plain = train(tiny_config("lora", train__epochs=1, name="plain"), log=lambda _: None)
    assert metrics["from_trial"] == 0
    assert 0 < metrics["parameters"]["trainable"] < metrics["parameters"]["total"]
    assert metrics["parameters"] == plain["parameters"]
