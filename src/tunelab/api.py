"""The Python API: `train`, `evaluate`, `predict` — the same functions the CLI calls."""
from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig
from .data import Splits, load_splits, rows_to_examples
from .data.files import read_rows
from .diagnostics import overfitting_warnings
from .errors import ConfigError, TunelabError
from .pipeline import data_for, fit, reload
from .runs import RunLock, RunWriter, check_free, read_run, run_name, versions
from .settings import from_dict, load_config
from .tasks import task_for
from .tracking import Tracking
from .training import distributed, fsdp
from .training.checkpoint import Checkpoint
from .training.memory import PeakMemory
from .training.precision import device
from .training.state import TrainState
from .tune import as_overrides, kept_folder, kept_trial, search, trials_table, with_params


def _config(config: RunConfig | str | Path | dict, overrides: list[str] | dict | None) -> RunConfig:
    if isinstance(config, RunConfig):
        return config if not overrides else load_config(config.to_dict(), overrides)
    return load_config(config, overrides)


def train(config: RunConfig | str | Path | dict, overrides: list[str] | dict | None = None, *,
          overwrite: bool = False, resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or fit) one method on one dataset; writes a run folder and returns its metrics.

    `config` is a `RunConfig`, a YAML path or a dict; `overrides` are dotted `key=value` strings.
    `resume` continues the interrupted run of this config from its checkpoint (`.NAME.checkpoint/`).
    """
    cfg = _config(config, overrides)
    unsupported = distributed.unsupported_launch()
    if unsupported:
        raise TunelabError(f"the accelerate config asks for {unsupported}, which tunelab's training loop does not do "
                           f"(it trains data-parallel, or sharded with FSDP); use distributed_type: MULTI_GPU "
                           f"(configs/distributed/ddp.yaml), FSDP (configs/distributed/fsdp.yaml), or torchrun "
                           f"--nproc_per_node N")
    processes = distributed.launched()  # started by torchrun: how many train together
    if fsdp.asked_by_launcher() and not cfg.train.fsdp:  # `accelerate launch` with distributed_type: FSDP
        cfg = load_config(cfg.to_dict(), ["train.fsdp=true"])  # the run's config says how it was trained
    if cfg.train.fsdp:
        fsdp.Options.from_launch()  # its settings checked before any process waits for another
        if processes == 1:
            raise ConfigError("`train.fsdp` shards the model over the processes that torchrun or accelerate launch "
                               "start, but this one runs alone; start several (torchrun --nproc_per_node N, or "
                               "num_processes in the accelerate config), or set train.fsdp=false")
    if cfg.train.batch_size % processes:
        below = max(1, cfg.train.batch_size // processes) * processes
        raise TunelabError(f"`train.batch_size` is the batch of all {processes} processes together, so it must be a "
                           f"multiple of {processes}, got {cfg.train.batch_size}; set train.batch_size={below} or "
                           f"{below + processes}, or start a number of processes that divides it (torchrun "
                           f"--nproc_per_node)")
    distributed.setup()  # join the others (a no-op outside torchrun)
    task = task_for(cfg)
    splits = data_for(cfg, task)
    folder = Path(cfg.output) / run_name(cfg)
    try:
        if not distributed.is_main():  # the others train and evaluate their parts; rank 0 alone writes and logs
            check_free(folder, overwrite)
            return _train(cfg, task, splits, folder, overwrite, resume, lambda line: None, writes=False)
        with RunLock(folder):  # one writer per run name: a second process is refused, naming the first
            return _train(cfg, task, splits, folder, overwrite, resume, log)
    finally:
        distributed.finish()


def _train(cfg: RunConfig, task, splits: Splits, folder: Path, overwrite: bool, resume: bool,
           log: Callable[[str], None], writes: bool = True) -> dict[str, Any]:
    checkpoint = Checkpoint(folder, cfg.to_dict(), cfg.train.checkpoint_every,
                            resolve=lambda saved: load_config(saved).to_dict(), keep=cfg.train.keep_checkpoints)
    if resume:
        checkpoint.check_resumable()
    elif checkpoint.exists():  # never start over silently on top of hours of someone's training
        raise TunelabError(f"{checkpoint.folder} holds an interrupted run of this name ({checkpoint.summary()}); "
                           f"pass --resume to continue it, or delete that folder to start over")
    writer = RunWriter(folder, overwrite) if writes else None
    processes = distributed.world()
    log(f"run {folder}: {cfg.method.name} on {cfg.data.source} "
        f"({len(splits.train)} train / {len(splits.validation)} validation / {len(splits.test)} test)"
        + (f", data-parallel over {processes} processes ({cfg.train.batch_size // processes} examples of each "
           f"batch of {cfg.train.batch_size} per process)" if processes > 1 else ""))
    tracking = Tracking([], log)
    try:
        if writer:  # before training: a store that fails ends it here
            tracking = Tracking.open(cfg, writer.tmp, folder, log)
        started = time.time()
        with PeakMemory() as memory:
            adapted = fit(cfg, splits, log, checkpoint=checkpoint, resume=resume, hooks=tracking)
        # A resumed run's time includes the training done before the interruption.
        fit_seconds = time.time() - started + (adapted.state.seconds_before_resume if adapted.state else 0.0)
        metrics = _write_run(cfg, task, splits, adapted, fit_seconds, memory.peak_mb, memory.device_peak_mb,
                             writer, log)
        if not writer:
            return metrics
        tracking.finished(metrics, adapted.state)
        run_folder = writer.commit()
    except BaseException as e:
        tracking.failed(e)
        if writer:
            writer.discard()
        if checkpoint.exists():
            log(f"the checkpoint at {checkpoint.summary()} stays in {checkpoint.folder}: the same command with "
                f"--resume continues from there")
        raise
    checkpoint.remove()
    tracking.committed(run_folder)
    metrics["run_folder"] = str(run_folder)
    _summary(metrics, log)
    return metrics


def _write_run(cfg: RunConfig, task, splits: Splits, adapted, fit_seconds: float, peak_rss_mb: float,
               device_peak_mb: float | None, writer: RunWriter | None, log: Callable[[str], None],
               parameters: dict[str, Any] | None = None, from_trial: int | None = None) -> dict[str, Any]:
    """Evaluate a fitted method on validation and test and write its run folder's files; returns the metrics.
    `parameters` are the trained and total weights where the model no longer shows them (a reloaded one);
    `from_trial` is the search trial whose model this is."""
    state = adapted.state
    validation, validation_scores = adapted.evaluate_with_outputs(splits.validation)
    predict_start = time.time()
    test_scores, test_loss = adapted.scores(splits.test, with_loss=True)
    predict_seconds = time.time() - predict_start
    test = task.metrics(test_scores, splits.test, splits.labels)
    if test_loss is not None:
        test["loss"] = test_loss
    diagnostics = _diagnostics(adapted, splits, validation)
    for warning in diagnostics["warnings"]:
        log(f"warning: {warning}")
    metrics = {
        "method": cfg.method.name, "family": adapted.method.family, "task": cfg.task, "model": cfg.model,
        "dataset": cfg.data.source, "validation": validation, "test": test,
        "parameters": parameters or adapted.parameters(),
        "time": {"fit_seconds": round(fit_seconds, 2), "test_predict_seconds": round(predict_seconds, 3),
                 "test_examples_per_second": round(len(splits.test) / max(predict_seconds, 1e-9), 1)},
        "memory": {"peak_rss_mb": peak_rss_mb, "device_peak_mb": device_peak_mb},
        "epochs_run": state.epoch if state else 0, "best_epoch": state.best_epoch if state else 0,
        "stopped_early": state.stopped_early if state else False,
        "resumed_at_step": state.resumed_at_step if state else None,
        "skipped_steps": state.skipped_steps if state else 0,
        "diagnostics": diagnostics,
        "newly_initialised": adapted.newly_initialised, "trained_head_modules": adapted.trained_heads,
        "splits": splits.sizes(), "labels": splits.labels,
        "precision": adapted.precision, "device": device().type, "versions": versions(),
    }
    if distributed.world() > 1:
        metrics["processes"] = distributed.world()
    if from_trial is not None:
        metrics["from_trial"] = from_trial
    # Every process: a sharded (FSDP) model's weights are gathered from all of them; rank 0 writes.
    adapted.method.save(writer.path("model") if writer else None)
    if writer is None:  # another process of a data-parallel run: rank 0 writes
        return metrics
    adapted.tokenizer.save_pretrained(writer.path("model"))
    writer.yaml("config.yaml", cfg.to_dict())
    writer.json("metrics.json", metrics)
    writer.jsonl("history.jsonl", state.history if state else [])
    writer.jsonl("predictions.jsonl", task.prediction_rows(splits.test, test_scores, splits.labels))
    # The validation rows too: a comparison resamples them for the intervals that decide its recommendation.
    writer.jsonl("validation_predictions.jsonl",
                 task.prediction_rows(splits.validation, validation_scores, splits.labels))
    for name, rows in adapted.method.run_files().items():
        writer.jsonl(name, rows)
    return metrics


def tune(config: RunConfig | str | Path | dict, overrides: list[str] | dict | None = None, *, trials: int = 8,
         minutes: float | None = None, storage: str | Path | None = None, search_only: bool = False,
         overwrite: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Search the configured method's hyper-parameters on the validation split (Optuna), then train the best
    setting as a run folder, which alone predicts the test split. Returns the search (`tune.summary`) with
    `run_folder` and `test` added. An interrupted search resumes from `storage` (default
    `<output>/<name>.tuning.db`)."""
    cfg = _config(config, overrides)
    local = Path(cfg.output) / f"{run_name(cfg)}.tuning.db"
    # A database URL is shared by workers on several machines; each keeps its best trial's model on its own disk.
    storage = storage if storage and "://" in str(storage) else Path(storage) if storage else local
    anchor = local if isinstance(storage, str) else storage  # the kept model: kept_folder(anchor)
    result = search(cfg, trials, storage, minutes=minutes, keep_best=not search_only, kept=kept_folder(anchor),
                    log=log)
    for line in trials_table(result):
        log(line)
    if result["best"] is None:
        raise TunelabError(f"no trial of {cfg.method.name} finished; see the trials above")
    best = result["best"]
    log(f"best: trial {best['number']}, validation {result['metric']} {best['value']:.4f}: "
        + " ".join(as_overrides(best["params"])))
    if not search_only:
        best_cfg = load_config(with_params(cfg.to_dict(), best["params"]))
        metrics = _run_of_kept_trial(best_cfg, anchor, best["number"], overwrite, log)
        if metrics is None:  # the best trial ran in an earlier session of the search, before weights were kept
            metrics = train(best_cfg, overwrite=overwrite, log=log)
        result.update(run_folder=metrics["run_folder"], test=metrics["test"])
    return result


def _run_of_kept_trial(cfg: RunConfig, storage: Path, number: int, overwrite: bool,
                       log: Callable[[str], None]) -> dict[str, Any] | None:
    """The run folder of the best setting from the model its trial kept (no second training), or None when
    the kept model is another trial's."""
    kept = kept_trial(storage)
    if not kept or kept["number"] != number:
        return None
    task = task_for(cfg)
    splits = data_for(cfg, task)
    with RunLock(Path(cfg.output) / run_name(cfg)):
        return _write_kept_trial(cfg, task, splits, storage, kept, number, overwrite, log)


def _write_kept_trial(cfg: RunConfig, task, splits: Splits, storage: Path, kept: dict[str, Any], number: int,
                      overwrite: bool, log: Callable[[str], None]) -> dict[str, Any]:
    writer = RunWriter(Path(cfg.output) / run_name(cfg), overwrite)
    log(f"run {writer.folder}: trial {number}'s model, kept by the search (not trained again)")
    tracking = Tracking([], log)
    try:
        tracking = Tracking.open(cfg, writer.tmp, writer.folder, log)
        adapted = reload(cfg, kept_folder(storage), splits.labels)
        adapted.state = TrainState(**kept["state"])
        adapted.method.head_modules = kept["trained_head_modules"]
        metrics = _write_run(cfg, task, splits, adapted, kept["fit_seconds"], kept["peak_rss_mb"],
                             kept["device_peak_mb"], writer, log, parameters=kept["parameters"], from_trial=number)
        tracking.finished(metrics, adapted.state)  # the trial's curves too: its history is the run's
        run_folder = writer.commit()
    except BaseException as e:
        tracking.failed(e)
        writer.discard()
        raise
    shutil.rmtree(kept_folder(storage))  # the run folder holds the same model now
    tracking.committed(run_folder)
    metrics["run_folder"] = str(run_folder)
    _summary(metrics, log)
    return metrics


def _diagnostics(adapted, splits, validation: dict[str, Any]) -> dict[str, Any]:
    """Train-split metrics on a sample (for the train/validation gap) and overfitting warnings."""
    if adapted.state is None:  # nothing trained: no train/validation gap to watch
        return {"metric": None, "train": None, "warnings": []}
    task = adapted.task
    metric = adapted.cfg.train.early_stopping.metric or task.default_metric
    sample = random.Random(adapted.cfg.train.seed).sample(splits.train, min(len(splits.train),
                                                                            task.diagnostic_sample))
    train_metrics = adapted.evaluate(sample)
    state = adapted.state
    warnings = overfitting_warnings(state.history, metric, train_metrics.get(metric), validation.get(metric),
                                    state.stopped_early, metric in task.lower_is_better,
                                    scale=100 if metric in task.percent_metrics else 1)
    keep = {k: v for k, v in train_metrics.items() if isinstance(v, float)}
    return {"metric": metric, "train": keep, "warnings": warnings}


def _summary(metrics: dict[str, Any], log: Callable[[str], None]) -> None:
    test = {k: round(v, 4) for k, v in metrics["test"].items() if isinstance(v, float)}
    log(f"test: {test}")
    log(f"saved to {metrics['run_folder']}")


def _load_run(run: str | Path):
    folder, raw = read_run(run)
    cfg = from_dict(raw)
    labels = _run_labels(folder)
    return folder, cfg, labels


def _run_labels(folder: Path) -> list[str]:
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        raise TunelabError(f"{folder} has no metrics.json; the run did not finish, train it again")
    return json.loads(metrics.read_text())["labels"]


def evaluate(run: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a finished run on `data` (a file with the run's columns), or on its own test split."""
    folder, cfg, labels = _load_run(run)
    task = task_for(cfg)
    if data is None:
        examples = load_splits(cfg.data, task).test
    else:
        examples = rows_to_examples(read_rows(data), cfg.data, task)
        if labels:
            for e in examples:
                if e.label not in labels:
                    raise TunelabError(f"{e.origin}: label {e.label!r} is not one the run was trained on: "
                                       f"{', '.join(labels)}")
    adapted = reload(cfg, folder, labels)
    return adapted.evaluate(examples)


def predict(run: str | Path, input: str | Path, output: str | Path, overwrite: bool = False) -> int:
    """Write one JSON line of prediction per input row; returns the number of rows."""
    folder, cfg, labels = _load_run(run)
    task = task_for(cfg)
    output = Path(output)
    if output.exists() and not overwrite:
        raise TunelabError(f"{output} exists already; choose another --output or pass --overwrite")
    examples = rows_to_examples(read_rows(input), cfg.data, task, need_label=False)
    adapted = reload(cfg, folder, labels)
    scores, _ = adapted.scores(examples)
    tmp = output.with_name(f".{output.name}.partial")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", encoding="utf-8") as f:
        for row in task.prediction_rows(examples, scores, labels):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(output)
    return len(examples)


__all__ = ["train", "evaluate", "predict"]
