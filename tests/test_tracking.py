"""Experiment tracking (`train.report_to`): what TensorBoard and MLflow hold, read back with their own readers, is
what the run folder holds (history.jsonl, metrics.json), through a resume and in a comparison; off by default."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from tunelab.api import train
from tunelab.cli import main
from tunelab.comparison import compare
from tunelab.tracking import MLflow, flat

BOTH = ["tensorboard", "mlflow"]


@pytest.fixture(autouse=True)
def own_store(monkeypatch):
    """The default store (`<output>/mlflow.db`), whatever the environment running the tests says."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
                 "TUNELAB_MLFLOW_PARENT_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _expected(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every curve the trackers should hold, as (step, value), from the run folder's own files."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in _history(run):
        for key, value in row.items():
            if key in ("step", "epoch", "time") or not _number(value):  # scalars only: no confusion matrix
                continue
            name = {"train_loss": "train/loss", "learning_rate": "train/learning_rate"}.get(
                key, key.replace("validation_", "validation/"))
            curves.setdefault(name, []).append((row["step"], value))
    metrics = json.loads((run / "metrics.json").read_text())
    last = _history(run)[-1]["step"]
    for split in ("validation", "test"):
        for key, value in metrics[split].items():
            if _number(value):
                curves[f"final/{split}/{key}"] = [(last, value)]
    curves["final/fit_seconds"] = [(last, metrics["time"]["fit_seconds"])]
    curves["final/trainable_parameters"] = [(last, metrics["parameters"]["trainable"])]
    return curves


def _tensorboard(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})  # 0: keep every value
    events.Reload()
    return {tag: [(e.step, make_ndarray(e.tensor_proto).item()) for e in events.Tensors(tag)]
            for tag in events.Tags()["tensors"] if tag != "_hparams_/session_start_info"
            and not tag.startswith("_hparams_")}


def _client(store: Path):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def _mlflow(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in client.get_run(run_id).data.metrics}


def _runs(client) -> dict[str, object]:
    experiment = client.get_experiment_by_name("tunelab").experiment_id
    return {r.info.run_name: r for r in client.search_runs([experiment])}


def test_both_trackers_hold_what_the_run_folder_holds_through_a_resume(tiny_config, tmp_path, monkeypatch):
    """Stopped past its checkpoint (step 4) after MLflow had logged step 6, then resumed: the trackers hold the
    finished run's history.jsonl and metrics.json, value for value and each step once. The resumed run reopens
    the same MLflow run and adds only what it lacks; its TensorBoard file is written afresh from the checkpoint's
    history (one file)."""
    cfg = tiny_config("lora", name="tracked", train__report_to=BOTH, train__checkpoint_every=4)
    logged = MLflow.recorded

    def stop_after_step_6(self, row):
        logged(self, row)
        if row["step"] == 6:
            raise KeyboardInterrupt
    monkeypatch.setattr(MLflow, "recorded", stop_after_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=lambda line: None)
    store = tmp_path / "runs"
    client = _client(store)
    (stopped,) = _runs(client).values()
    assert stopped.info.status == "KILLED" and _mlflow(client, stopped.info.run_id)["train/loss"][-1][0] == 6

    monkeypatch.setattr(MLflow, "recorded", logged)
    run = Path(train(cfg, resume=True, log=lambda line: None)["run_folder"])
    assert json.loads((run / "metrics.json").read_text())["resumed_at_step"] == 4
    expected = _expected(run)
    assert {"train/loss", "train/learning_rate", "validation/loss", "validation/accuracy",
            "final/test/f1"} <= set(expected)
    assert len(expected["validation/loss"]) == 2  # one per epoch

    assert _tensorboard(run / "tensorboard") == expected
    assert len(list((run / "tensorboard").iterdir())) == 1

    (tracked,) = _runs(client).values()  # the same run, now finished
    assert tracked.info.run_id == stopped.info.run_id
    assert tracked.info.run_name == "tracked" and tracked.info.status == "FINISHED"
    assert _mlflow(client, tracked.info.run_id) == expected
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert tracked.data.params == {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat(saved).items()}
    artefacts = Path(tracked.info.artifact_uri)
    assert artefacts.is_relative_to(store / "mlartifacts")
    assert (artefacts / "metrics.json").read_bytes() == (run / "metrics.json").read_bytes()
    assert (artefacts / "model" / "adapter_config.json").is_file()
    assert not (artefacts / "tensorboard").exists()  # MLflow has those curves itself


@pytest.mark.long(seconds=17)
def test_a_comparison_groups_its_methods(tiny_config, tmp_path):
    """Two methods training at once (`--parallel 2`), both logging to the comparison's one SQLite store."""
    cfg = tiny_config("lora", train__report_to=BOTH, train__epochs=1)
    compare(cfg, ["lora", "full"], output=tmp_path / "comparisons", name="cmp", parallel=2, log=lambda line: None)
    folder = tmp_path / "comparisons" / "cmp"

    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    board = EventMultiplexer().AddRunsFromDirectory(str(folder / "runs"))  # `tensorboard --logdir .../runs`
    assert sorted(board.Runs()) == ["full/tensorboard", "lora/tensorboard"]

    client = _client(folder)
    runs = _runs(client)
    assert sorted(runs) == ["cmp", "full", "lora"]
    parent = runs["cmp"]
    assert parent.info.status == "FINISHED" and parent.data.tags["tunelab.comparison"] == str(folder.resolve())
    assert (Path(parent.info.artifact_uri) / "comparison.json").read_bytes() == \
        (folder / "comparison.json").read_bytes()
    for method in ("lora", "full"):
        child = runs[method]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
        assert child.data.params["method.name"] == method
        expected = _expected(folder / "runs" / method)
        assert _mlflow(client, child.info.run_id) == expected
        assert _tensorboard(folder / "runs" / method / "tensorboard") == expected


def test_tracking_is_off_by_default_and_costs_no_import(tiny_config, tmp_path):
    run = Path(train(tiny_config("prompt", name="plain"), log=lambda line: None)["run_folder"])
    assert sorted(p.name for p in run.parent.iterdir()) == ["plain"]  # no mlflow.db, no mlartifacts
    assert not (run / "tensorboard").exists()
    # Neither tool is imported unless a config names it: no module of tunelab imports one at its top level.
    for module in (Path(__file__).parents[1] / "src" / "tunelab").rglob("*.py"):
        for node in ast.parse(module.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in ("mlflow", "tensorboard")
                        or n.startswith("torch.utils.tensorboard")], module


def test_an_unknown_tracker_is_a_config_error(tiny_config, tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny_config("lora")))
    assert main(["train", str(config), "train.report_to=[tensorboard, wandb]"]) == 2
    err = capsys.readouterr().err
    assert err == "error: `train.report_to[1]` must be one of: tensorboard, mlflow; got 'wandb'\n"


def test_a_store_that_does_not_answer_stops_before_training(tiny_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny_config("lora", name="never", train__report_to=["mlflow"])))
    assert main(["train", str(config)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: `train.report_to`: the MLflow store http://127.0.0.1:9 cannot be used (")
    assert err.count("\n") == 1 and "training" not in out
    assert not [p for p in (tmp_path / "runs").iterdir()]  # no run, no partial folder, no lock


def test_a_tracker_failing_mid_run_is_dropped_with_one_warning():
    """The policy of `Tracking`, on stand-in backends: the failing one is told the run failed and hears nothing
    more; the others, and the run, go on."""
    from tunelab.tracking import Backend, Tracking

    class Heard(Backend):
        def __init__(self, name: str, fail_at: int | None = None):
            self.name, self.fail_at, self.rows, self.status = name, fail_at, [], None

        def recorded(self, row):
            if row["step"] == self.fail_at:
                raise ConnectionError("connection refused\nsecond line")
            self.rows.append(row["step"])

        def failed(self, status):
            self.status = status

    lines: list[str] = []
    good, bad = Heard("tensorboard"), Heard("mlflow", fail_at=4)
    tracking = Tracking([good, bad], lines.append)
    for step in (2, 4, 6):
        tracking.recorded({"step": step, "train_loss": 0.5})
    assert good.rows == [2, 4, 6] and bad.rows == [2] and bad.status == "FAILED"
    assert lines == ["warning: mlflow stopped logging at step 4 (ConnectionError: connection refused); the run goes "
                     "on without it"]


def test_history_jsonl_is_written_while_training_and_is_the_final_one(tiny_config, tmp_path):
    """The web interface's live curves read the run's temporary history.jsonl: at each epoch's end it holds the
    rows so far, a prefix of the finished run's file."""
    seen = []

    def log(line: str) -> None:
        if "validation loss" in line:  # an epoch's evaluation was just recorded
            [live] = (tmp_path / "runs").glob(".*.partial-*/history.jsonl")
            seen.append([json.loads(row) for row in live.read_text().splitlines()])

    metrics = train(tiny_config("lora", train__epochs=2), log=log)
    final = _history(Path(metrics["run_folder"]))
    assert len(seen) == 2 and 0 < len(seen[0]) < len(seen[1]) == len(final)
    assert seen[0] == final[:len(seen[0])] and seen[1] == final
    assert "validation_loss" in seen[0][-1]
