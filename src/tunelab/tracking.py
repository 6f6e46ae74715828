"""Experiment tracking (`train.report_to`): a run's config, curves, final metrics and folder in TensorBoard and
MLflow, so that runs and a comparison's methods can be compared in those tools' own views.

One interface, `Backend`, one class per tool. `Tracking` holds those a config names and is the training loop's
hook (`training.loop.Hooks`): it hears when training (re)starts and each row the loop adds to the history, so a
tracker shows what `history.jsonl` holds, value for value. A tool is imported only when a config names it (MLflow
alone takes 1.5 s).

Live data and a resume:
- TensorBoard writes into the run's temporary folder (`.NAME.partial-*/tensorboard/`), which becomes the run
  folder's `tensorboard/`. An interrupted run's temporary folder goes (the next run of that name removes it), so a
  resumed run starts a fresh events file and first writes the checkpoint's history into it, at the values' own
  steps and times: one file, each step once, no `purge_step` needed.
- MLflow logs to its store as the run goes. The run's id is kept in the training state, so in the checkpoint; a
  resume reopens that run and logs only the steps it lacks (a killed process may have logged past its checkpoint:
  those steps come again with the same values, as a resume is exact). An id the store does not know (another
  store) starts a new run with the whole history.

Failures: a store that cannot be used ends the command before training; a tool failing later is dropped with a
warning and the run goes on (`Tracking._each`): a lost chart must not cost hours of training.
"""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

from .errors import TunelabError

PARENT_RUN = "TUNELAB_MLFLOW_PARENT_RUN_ID"  # a comparison's MLflow run, for its methods' processes
EXPERIMENT = "tunelab"  # unless MLFLOW_EXPERIMENT_ID / MLFLOW_EXPERIMENT_NAME say otherwise
NAMES = {"train_loss": "train/loss", "learning_rate": "train/learning_rate"}


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"epochs": 3}}` → `{"train.epochs": 3}`; lists and empty mappings stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def text(value: Any) -> str:
    """A parameter as MLflow keeps it: text, as written in JSON (`true`, `null`, `["query", "value"]`), cut to
    MLflow's 6,000 characters (a long label list); config.yaml in the artefacts has it whole."""
    return (value if isinstance(value, str) else json.dumps(value))[:6000]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def points(row: dict[str, Any]) -> dict[str, float]:
    """A history row's values under the trackers' names: `train/loss`, `train/learning_rate`, `validation/f1` …"""
    return {NAMES.get(k, k.replace("validation_", "validation/", 1)): float(v) for k, v in row.items()
            if k not in ("step", "epoch", "time") and _number(v)}


def final_points(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json's final figures: the validation and test metrics of the kept weights, and their cost."""
    out = {f"final/{split}/{k}": float(v) for split in ("validation", "test")
           for k, v in metrics[split].items() if _number(v)}
    out["final/fit_seconds"] = float(metrics["time"]["fit_seconds"])
    out["final/trainable_parameters"] = float(metrics["parameters"]["trainable"])
    return out


class Backend:
    """One tracking tool. `Tracking` calls `started(state)` when training (re)starts at `state` (log its history so
    far: a resumed run's), `recorded(row)` for each row the loop adds to the history, `finished(metrics, step)` with
    the final metrics before the run folder is moved in place, then `committed(folder)`; or `failed(status)`
    (`FAILED`, or `KILLED` by Ctrl-C or SIGTERM) when the run ends without a folder. Any call may raise."""
    name: str

    def started(self, state) -> None: ...
    def recorded(self, row: dict[str, Any]) -> None: ...
    def finished(self, metrics: dict[str, Any], step: int) -> None: ...
    def committed(self, folder: Path) -> None: ...
    def failed(self, status: str) -> None: ...


class TensorBoard(Backend):
    name = "tensorboard"

    def __init__(self, folder: Path, params: dict[str, Any], **_: Any):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        self.writer = SummaryWriter(str(folder / "tensorboard"))
        # The HParams tab filters numbers and booleans as such; what it cannot take (null, lists) goes as text.
        self.params = {k: v if isinstance(v, (str, int, float, bool)) else text(v) for k, v in params.items()}

    def started(self, state) -> None:
        for row in state.history:  # a resumed run's file is new (see the module's docstring): write what came before
            self.recorded(row)

    def recorded(self, row: dict[str, Any]) -> None:
        for tag, value in points(row).items():
            self._scalar(tag, value, row["step"], row.get("time"))

    def _scalar(self, tag: str, value: float, step: int, walltime: float | None = None) -> None:
        # Doubles, not TensorBoard's default float32: the values read back are history.jsonl's own.
        self.writer.add_scalar(tag, value, step, walltime=walltime, new_style=True, double_precision=True)

    def finished(self, metrics: dict[str, Any], step: int) -> None:
        from torch.utils.tensorboard.summary import hparams
        final = final_points(metrics)
        for tag, value in final.items():
            self._scalar(tag, value, step)
        # In this run's own file (SummaryWriter.add_hparams would open a sub-run): the HParams tab then shows each
        # run's config beside its final metrics, one row per run of `--logdir`.
        for summary in hparams(self.params, final):
            self.writer.file_writer.add_summary(summary)
        self.writer.close()

    def failed(self, status: str) -> None:
        self.writer.close()


class MLflow(Backend):
    name = "mlflow"

    def __init__(self, folder: Path, params: dict[str, Any], *, run_name: str, run_folder: Path, store: Path,
                 **_: Any):
        self.client, self.uri, self.experiment = connect(store)
        self.params, self.run_name, self.run_folder = params, run_name, run_folder
        self.run_id: str | None = None
        self.logged: dict[str, int] = {}  # the last step the run holds, per metric

    def started(self, state) -> None:
        from mlflow.entities import Param
        run = self._reopen(state.tracking.get(self.name))
        if run is None:
            tags = {"tunelab.run_folder": str(self.run_folder.resolve())}
            if os.environ.get(PARENT_RUN):  # a method of a comparison: MLflow shows it under the comparison's run
                tags["mlflow.parentRunId"] = os.environ[PARENT_RUN]
            run = self.client.create_run(self.experiment, run_name=self.run_name, tags=tags)
        self.run_id = state.tracking[self.name] = run.info.run_id
        self.logged = {key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
                       for key in run.data.metrics}
        # A param cannot change in MLflow; a resume may differ in keys that change nothing (checkpoint_every).
        new = [Param(k, text(v)) for k, v in self.params.items() if k not in run.data.params]
        for i in range(0, len(new), 100):  # MLflow's limit per call
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        for row in state.history:
            self.recorded(row)

    def _reopen(self, run_id: str | None):
        from mlflow.exceptions import MlflowException
        try:
            run = self.client.get_run(run_id) if run_id else None
        except MlflowException:  # not in this store
            return None
        if run is None or run.info.lifecycle_stage != "active":  # deleted in the UI since: start afresh
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run

    def recorded(self, row: dict[str, Any]) -> None:
        self._log(points(row), row["step"], row.get("time"))

    def _log(self, values: dict[str, float], step: int, at: float | None = None) -> None:
        from mlflow.entities import Metric
        stamp = int((at or time.time()) * 1000)
        new = [Metric(k, v, stamp, step) for k, v in values.items() if step > self.logged.get(k, -1)]
        if new:
            self.client.log_batch(self.run_id, metrics=new)
            self.logged.update({m.key: step for m in new})

    def finished(self, metrics: dict[str, Any], step: int) -> None:
        self._log(final_points(metrics), step)

    def committed(self, folder: Path) -> None:
        # The run folder, less `tensorboard/`: MLflow holds those curves itself, and a copy under `mlartifacts/`
        # would show every run twice in `tensorboard --logdir <output>`.
        for path in sorted(folder.iterdir()):
            if path.is_dir() and path.name != "tensorboard":
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")

    def failed(self, status: str) -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status)


def connect(store: Path):
    """An MLflow client on MLFLOW_TRACKING_URI, or else on the SQLite store `store/mlflow.db` (artefacts in
    `store/mlartifacts`), and the experiment's id; an unreachable store is a one-line error."""
    from mlflow import MlflowClient
    for noisy in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(store / 'mlflow.db').resolve()}"
    try:
        store.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_ID")
        if not experiment:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
            found = client.get_experiment_by_name(name)
            # Our own store keeps its artefacts beside it; a server's store decides for itself.
            where = None if os.environ.get("MLFLOW_TRACKING_URI") else str((store / "mlartifacts").resolve())
            experiment = found.experiment_id if found else client.create_experiment(name, artifact_location=where)
        else:
            client.get_experiment(experiment)
    except Exception as e:
        raise TunelabError(f"`train.report_to`: the MLflow store {uri} cannot be used ({_reason(e)}); start it, "
                           f"set MLFLOW_TRACKING_URI to one that answers, or remove mlflow from train.report_to"
                           ) from None
    return client, uri, experiment


BACKENDS: dict[str, type[Backend]] = {"tensorboard": TensorBoard, "mlflow": MLflow}


class LiveHistory(Backend):
    """`history.jsonl` in the run's temporary folder, a line per row as the loop records it, so that a watcher (the
    web interface's live curves) reads the curves while training; the finished run's file replaces it whole. Always
    on: a line per logging step costs nothing beside a training step."""
    name = "history.jsonl"

    def __init__(self, tmp: Path):
        self.path = tmp / "history.jsonl"

    def started(self, state) -> None:
        with self.path.open("w", encoding="utf-8") as f:  # a resumed run's history so far, then the new rows
            f.writelines(json.dumps(row) + "\n" for row in state.history)

    def recorded(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _reason(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


class Tracking:
    """The live `history.jsonl` and the backends of `train.report_to`, as one hook of the training loop."""

    def __init__(self, backends: list[Backend], log: Callable[[str], None] = print):
        self.backends, self.log, self.step, self.is_started = backends, log, 0, False

    @classmethod
    def open(cls, cfg, tmp: Path, run_folder: Path, log: Callable[[str], None] = print) -> "Tracking":
        """The backends `cfg.train.report_to` names, writing into the run's temporary folder `tmp`; called before
        training, so that a store that cannot be used ends the command before any."""
        params, backends = flat(cfg.to_dict()), [LiveHistory(tmp)]
        try:
            for name in dict.fromkeys(cfg.train.report_to):
                backends.append(BACKENDS[name](tmp, params, run_name=run_folder.name, run_folder=run_folder,
                                               store=run_folder.parent))
        except BaseException as e:
            cls(backends, log).failed(e)  # close what was opened (TensorBoard's writer) before the error ends it
            raise
        return cls(backends, log)

    def _each(self, what: str, call: Callable[[Backend], None]) -> None:
        for backend in list(self.backends):
            try:
                call(backend)
            except Exception as e:  # a chart lost must not lose the training run
                self.log(f"warning: {backend.name} stopped {what} at step {self.step} ({_reason(e)}); the run goes "
                         f"on without it")
                self.backends.remove(backend)
                with suppress(Exception):
                    backend.failed("FAILED")

    def started(self, state) -> None:
        self.is_started, self.step = True, state.step
        self._each("starting", lambda b: b.started(state))

    def recorded(self, row: dict[str, Any]) -> None:
        self.step = row["step"]
        self._each("logging", lambda b: b.recorded(row))

    def finished(self, metrics: dict[str, Any], state) -> None:
        if not self.is_started:  # nothing trained (a prompt), or a kept trial's model: its history, if any
            self.started(state or SimpleNamespace(step=0, history=[], tracking={}))
        self._each("logging the final metrics", lambda b: b.finished(metrics, self.step))

    def committed(self, folder: Path) -> None:
        self._each("logging the run folder", lambda b: b.committed(folder))

    def failed(self, error: BaseException) -> None:
        status = "FAILED" if isinstance(error, Exception) else "KILLED"  # Ctrl-C, SIGTERM: BaseExceptions
        for backend in self.backends:
            with suppress(Exception):
                backend.failed(status)


@contextmanager
def comparison_run(report_to: list[str], folder: Path, log: Callable[[str], None] = print
                   ) -> Iterator[dict[str, str]]:
    """A comparison's parent MLflow run, named after it, in `folder/mlflow.db` (or MLFLOW_TRACKING_URI); yields the
    environment that puts its methods' runs under it. Run again (resumed), a comparison reuses its parent run."""
    if "mlflow" not in report_to:
        yield {}
        return
    client, uri, experiment = connect(folder)
    tag = str(folder.resolve())
    runs = client.search_runs([experiment], filter_string=f"tags.`tunelab.comparison` = {json.dumps(tag)}",
                              max_results=1)
    run_id = runs[0].info.run_id if runs else \
        client.create_run(experiment, run_name=folder.name, tags={"tunelab.comparison": tag}).info.run_id
    client.update_run(run_id, status="RUNNING")
    try:
        yield {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": experiment, PARENT_RUN: run_id}
    except BaseException as e:
        client.set_terminated(run_id, "FAILED" if isinstance(e, Exception) else "KILLED")
        raise
    try:
        for name in ("comparison.json", "report.md", "report.html"):
            if (folder / name).is_file():
                client.log_artifact(run_id, str(folder / name))
        client.set_terminated(run_id, "FINISHED")
    except Exception as e:
        log(f"warning: mlflow could not log the comparison's report ({_reason(e)})")
