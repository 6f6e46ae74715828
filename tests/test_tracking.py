"""Experiment tracking (`train.report_to`): what TensorBoard and MLflow hold, read back with their own readers, is
what the run folder holds (history.jsonl, metrics.json), through a resume and in a comparison; off by default."""
from __future__ import annotations

import json
import subprocess
import sys
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


def test_both_trackers_hold_what_the_run_folder_holds(tiny_config, tmp_path):
    cfg = tiny_config("lora", name="tracked", train__report_to=BOTH)
    metrics = train(cfg, log=lambda line: None)
    run, store = Path(metrics["run_folder"]), tmp_path / "runs"
    expected = _expected(run)
    assert {"train/loss", "train/learning_rate", "validation/loss", "validation/accuracy",
            "final/test/f1"} <= set(expected)
    assert len(expected["validation/loss"]) == 2  # one per epoch

    assert _tensorboard(run / "tensorboard") == expected

    client = _client(store)
    (tracked,) = _runs(client).values()
    assert tracked.info.run_name == "tracked" and tracked.info.status == "FINISHED"
    assert _mlflow(client, tracked.info.run_id) == expected
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert tracked.data.params == {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat(saved).items()}
    artefacts = Path(tracked.info.artifact_uri)
    assert artefacts.is_relative_to(store / "mlartifacts")
    assert (artefacts / "metrics.json").read_bytes() == (run / "metrics.json").read_bytes()
    assert (artefacts / "model" / "adapter_config.json").is_file()
    assert not (artefacts / "tensorboard").exists()  # MLflow has those curves itself
