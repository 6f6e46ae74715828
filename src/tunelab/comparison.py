"""Run several methods on the same splits with the same seed, side by side, and recommend one.

Each method trains in its own process (`tunelab train`), which gives every method a clean peak
memory figure and keeps a crash or an out-of-memory kill to that one method: it is recorded as
failed with its reason and the others still run. Finished runs are reused when the command is
repeated with the same config.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from .config import RunConfig, _merge, differences, parse_overrides, read_yaml
from .errors import ConfigError, TunelabError
from .methods import METHODS
from .measured import measure
from .plan import base_dict, default_methods, method_config  # noqa: F401  (method_config: this module's API too)
from .recommend import recommend_measured
from .runs import RunLock, folder_problem
from .report import write_report
from .report.table import shown_metrics, table_rows  # noqa: F401  (table_rows: part of this module's API)
from .settings import load_config
from .tasks import TASKS
from .tracking import comparison_run
from .training.checkpoint import checkpoint_folder, complete_checkpoints
from .tune import kept_folder, load_summary, with_params
from .workers import run_all, slots, stream


def compare(config: RunConfig | str | Path | dict, methods: list[str] | None = None,
            overrides: list[str] | None = None, *, output: str | Path | None = None, name: str | None = None,
            overwrite: bool = False, max_minutes: float | None = None, max_memory_mb: float | None = None,
            parallel: int = 1, devices: list[str] | None = None, log: Callable[[str], None] = print
            ) -> dict[str, Any]:
    """Train each method (after a search of its settings with `tune.trials`, on `compare.seeds` seeds), write
    `comparison.json` and the report in `output`/NAME; returns the comparison. `output` (`--output`) wins over
    the config's `output:`; with neither, comparisons go to `comparisons/`. `parallel` methods train at once
    (the CPU cores split between them), or one per GPU of `devices`."""
    base = base_dict(config, overrides)
    output = output or comparisons_folder(config, base)
    cfg = load_config(base)
    methods = methods or default_methods(cfg)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError([f"--methods: {METHODS.unknown(m)}" for m in unknown])
    for m in methods:  # every method's config is validated before anything trains
        load_config(method_config(base, m, Path(".")))
    # A comparison at tuned settings is another comparison: it must not meet the untuned runs' folder.
    default_name = (cfg.name or _default_name(cfg)) + ("-tuned" if cfg.tune.trials else "")
    problem = folder_problem(output, "--output")
    if problem:
        raise ConfigError(problem)
    folder = Path(output) / (name or default_name)
    if parallel < 1:
        raise ConfigError("--parallel must be 1 or more")
    with RunLock(folder, "comparison"):  # two `compare` of one name at once would train the same runs twice
        # Its MLflow run, when tracked, is the parent of its methods' runs: their processes are told its id.
        with comparison_run(cfg.train.report_to, folder, log) as tracking:
            return _compare_in(folder, methods, base, cfg, overwrite, max_minutes, max_memory_mb, log,
                               [{**slot, **tracking} for slot in slots(parallel, devices)])


def comparisons_folder(config: RunConfig | str | Path | dict, base: dict[str, Any]) -> str:
    """Where a comparison goes without `--output`: the config's `output:` when it sets one (every command writes
    where the config says), else `comparisons/` — not the default `runs/`, which would mix comparisons with runs."""
    default = RunConfig.__dataclass_fields__["output"].default
    if isinstance(config, RunConfig):
        return config.output if config.output != default else "comparisons"
    return str(base["output"]) if base.get("output") else "comparisons"


def _compare_in(folder: Path, methods: list[str], base: dict[str, Any], cfg: RunConfig, overwrite: bool,
                max_minutes: float | None, max_memory_mb: float | None, log: Callable[[str], None],
                environments: list[dict[str, str]]) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    together = len(environments) > 1

    def one(method: str, env: dict[str, str]) -> dict[str, Any]:
        log(f"[{methods.index(method) + 1}/{len(methods)}] {method}" + (f" ({_slot(env)})" if together else ""))
        # Lines of methods that train at once are told apart by their method's name.
        method_log = (lambda line: log(f"[{method}] {line.strip()}")) if together else log
        return _compare_method(method, base, cfg, folder, overwrite, method_log, env)

    rows = run_all(methods, one, environments)
    task = _task(cfg)
    metric = cfg.train.early_stopping.metric or task.default_metric
    seeds = [cfg.train.seed + k for k in range(cfg.compare.seeds)]
    comparison = {"name": folder.name, "folder": str(folder), "task": cfg.task, "model": cfg.model,
                  "dataset": cfg.data.source, "seed": cfg.data.split.seed, "seeds": seeds, "methods": methods,
                  "metric": metric, "confidence": cfg.compare.confidence, "resamples": cfg.compare.resamples,
                  "budget": {"max_minutes": max_minutes, "max_memory_mb": max_memory_mb}, "rows": rows}
    measured = measure(rows, metric, task, cfg.compare.confidence, cfg.compare.resamples)
    comparison["sizes"] = measured.sizes
    for row in rows:
        if row["status"] == "ok":
            row["interval"] = {split: measured.interval(row["method"], split) for split in ("validation", "test")}
    comparison["recommendation"] = recommend_measured(comparison, task, measured)
    if len(seeds) > 1:
        comparison["per_seed"] = [_seed_alone(comparison, k, task) for k in range(len(seeds))]
    tmp = folder / ".comparison.json.partial"
    tmp.write_text(json.dumps(comparison, indent=2) + "\n")
    tmp.replace(folder / "comparison.json")  # written whole or not at all
    write_report(folder)
    _print_table(comparison, log)
    return comparison


def _slot(env: dict[str, str]) -> str:
    if "CUDA_VISIBLE_DEVICES" in env:
        return f"GPU {env['CUDA_VISIBLE_DEVICES']}"
    return f"{env.get('OMP_NUM_THREADS', 'all')} CPU threads"


def _compare_method(method: str, base: dict[str, Any], cfg: RunConfig, folder: Path, overwrite: bool,
                    log, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One row: the method's search (when asked), then one run per training seed."""
    config = method_config(base, method, folder)
    tunable = METHODS.get(method).default_learning_rate is not None
    tuning = None
    if cfg.tune.trials and tunable:
        tuning = _tune_method(method, config, folder, cfg.tune.trials, cfg.tune.minutes, overwrite, log, env)
        if tuning.get("status") == "failed":
            return tuning
        config = with_params(config, tuning["best"]["params"])
    # Only a method whose result depends on its seed runs once per seed; the prompt search is deterministic.
    seeds = [cfg.train.seed + k for k in range(cfg.compare.seeds if METHODS.get(method).seeded else 1)]
    runs = []
    for k, seed in enumerate(seeds):
        if len(seeds) > 1:
            log(f"  seed {seed} ({k + 1} of {len(seeds)})")
        run_name = method if k == 0 else f"{method}-seed{seed}"  # the first seed's run keeps the method's name
        run_cfg = load_config(_merge(config, {"name": run_name, "train": {"seed": seed}}))
        runs.append(_run_method(method, run_cfg, folder, overwrite, log, run_name, env))
        if runs[-1]["status"] != "ok":
            return {**runs[-1], "reason": runs[-1]["reason"] + (f" (seed {seed})" if len(seeds) > 1 else "")}
    return combine_seeds(runs, tuning)


def _seed_alone(comparison: dict[str, Any], k: int, task) -> dict[str, Any]:
    """What the comparison would have recommended with the k-th training seed alone: if the picks of single
    seeds disagree, one run per method would not have been enough."""
    rows = []
    for row in comparison["rows"]:
        if row["status"] == "ok":
            run = row["runs"][min(k, len(row["runs"]) - 1)]  # a method that runs once (prompt) serves every seed
            row = {**row, **run, "runs": [run], "spread": None}
        rows.append(row)
    alone = {**comparison, "rows": rows, "seeds": [comparison["seeds"][k]]}
    measured = measure(rows, comparison["metric"], task, comparison["confidence"], comparison["resamples"])
    rec = recommend_measured(alone, task, measured)
    return {"seed": comparison["seeds"][k], "method": rec["method"], "best": rec["best"], "tied": rec["tied"]}


def combine_seeds(runs: list[dict[str, Any]], tuning: dict[str, Any] | None = None) -> dict[str, Any]:
    """A method's row from its runs: means over seeds, their standard deviations in `spread`."""
    row = dict(runs[0])
    row["runs"] = [{"seed": r["seed"], "run_folder": r["run_folder"], "validation": r["validation"],
                    "test": r["test"], "fit_seconds": r["fit_seconds"]} for r in runs]
    row["spread"] = None
    if len(runs) > 1:
        row["spread"] = {}
        for split in ("validation", "test"):
            keys = [k for k in runs[0][split] if all(k in r[split] for r in runs)]
            row[split] = {k: float(np.mean([r[split][k] for r in runs])) for k in keys}
            row["spread"][split] = {k: float(np.std([r[split][k] for r in runs], ddof=1)) for k in keys}
        row["fit_seconds"] = float(np.mean([r["fit_seconds"] for r in runs]))
        row["peak_memory_mb"] = max(r["peak_memory_mb"] for r in runs)
        row["predict_examples_per_second"] = float(np.mean([r["predict_examples_per_second"] for r in runs]))
        row["warnings"] = list(dict.fromkeys(w for r in runs for w in r["warnings"]))
    row["tuning"] = tuning
    return row


def _tune_method(method: str, config: dict[str, Any], folder: Path, trials: int, minutes: float | None,
                 overwrite: bool, log, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Search the method's settings in a process of its own (`tunelab tune`); its trials stay in
    `tuning/<method>.db`, so that an interrupted comparison resumes the search. The search's best trial becomes
    the first seed's run (`runs/<method>`) without a second training, unless that run exists already."""
    storage = folder / "tuning" / f"{method}.db"
    cfg = load_config(config)
    metric = cfg.train.early_stopping.metric or _task(cfg).default_metric
    if overwrite and storage.exists():
        storage.unlink()
        shutil.rmtree(kept_folder(storage), ignore_errors=True)
    has_run = (folder / "runs" / method / "metrics.json").is_file() and not overwrite
    config_path = folder / "tuning" / f".{method}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "tunelab.cli", "tune", str(config_path), "--trials", str(trials),
               "--storage", str(storage)] + (["--search-only"] if has_run else ["--overwrite"] if overwrite else []) \
        + (["--minutes", str(minutes)] if minutes else [])
    log(f"  searching {trials} settings on the validation split (trials in {storage})")
    try:
        status, last, seconds = stream(command, folder / "tuning" / f"{method}.log", log, env)
    finally:
        config_path.unlink(missing_ok=True)
    if status != 0:
        reason = _failure_reason(status, last)
        log(f"  {method}'s search failed: {reason}")
        return {"method": method, "family": METHODS.get(method).family, "status": "failed",
                "reason": f"search: {reason}", "seconds": seconds, "log": str(folder / "tuning" / f"{method}.log")}
    return load_summary(storage, method, metric)


def _task(cfg: RunConfig):
    return TASKS.get(cfg.task)


def _default_name(cfg: RunConfig) -> str:
    source = cfg.data.source if cfg.data.source.isidentifier() else Path(cfg.data.source).stem
    return f"{source}-{Path(cfg.model).name}"


def _run_method(method: str, cfg: RunConfig, folder: Path, overwrite: bool, log, run_name: str | None = None,
                env: dict[str, str] | None = None) -> dict[str, Any]:
    run_name = run_name or method
    run = folder / "runs" / run_name
    wanted = cfg.to_dict()
    if (run / "metrics.json").is_file() and not overwrite:
        had = _as_now(yaml.safe_load((run / "config.yaml").read_text()))
        changed = differences(had, wanted)
        if not changed:
            log(f"  reusing the finished run {run}")
            return _row(method, run, cfg.train.seed)
        raise TunelabError(f"{run} was trained with another config ({'; '.join(changed[:3])}); pass --name NEW for a "
                           f"new comparison, or --overwrite to retrain")
    config_path = folder / "runs" / f".{run_name}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(wanted, sort_keys=False))
    command = [sys.executable, "-m", "tunelab.cli", "train", str(config_path)] + (["--overwrite"] if overwrite else [])
    if complete_checkpoints(run):  # the method was interrupted in an earlier comparison: go on from there
        command.append("--resume")
        log(f"  resuming from its checkpoint in {checkpoint_folder(run)}")
    log_path = folder / "runs" / f"{run_name}.log"
    try:
        status, last, seconds = stream(command, log_path, log, env)
    finally:
        config_path.unlink(missing_ok=True)  # the method's config lives in its run folder once it has one
    if status != 0:
        reason = _failure_reason(status, last)
        log(f"  {method} failed: {reason} (log: {log_path})")
        return {"method": method, "family": METHODS.get(method).family, "status": "failed", "reason": reason,
                "seconds": seconds, "log": str(log_path)}
    return _row(method, run, cfg.train.seed)


def _as_now(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run's config with the options added since it was trained at their defaults (which it ran with)."""
    try:
        return load_config(saved).to_dict()
    except TunelabError:  # an option it had is gone or changed meaning: compare it as written
        return saved


def _failure_reason(status: int, last: str) -> str:
    if status in (-9, 137):
        return "killed by the system (out of memory?)"
    if last.startswith("error: "):
        return last[len("error: "):]
    return last or f"exit status {status}"


def _row(method: str, run: Path, seed: int) -> dict[str, Any]:
    m = json.loads((run / "metrics.json").read_text())
    size = sum(p.stat().st_size for p in (run / "model").rglob("*") if p.is_file())
    return {"method": method, "family": m["family"], "status": "ok", "run_folder": str(run), "seed": seed,
            "test": _scalars(m["test"]), "validation": _scalars(m["validation"]),
            "parameters": m["parameters"], "fit_seconds": m["time"]["fit_seconds"],
            "peak_memory_mb": m["memory"]["device_peak_mb"] or m["memory"]["peak_rss_mb"],
            "saved_size_mb": round(size / 2**20, 2),
            "predict_examples_per_second": m["time"]["test_examples_per_second"],
            "epochs_run": m["epochs_run"], "warnings": m.get("diagnostics", {}).get("warnings", [])}


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def _print_table(comparison: dict[str, Any], log) -> None:
    rows = table_rows(comparison)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    log("")
    for r in rows:
        log("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    log("")
    log(f"recommendation: {comparison['recommendation']['text']}")
    if comparison.get("per_seed"):
        log("each training seed alone: " + "; ".join(
            f"seed {p['seed']} → {p['method']}" + (f" (tied: {', '.join(p['tied'])})" if len(p["tied"]) > 1 else "")
            for p in comparison["per_seed"]))
    tuned = any(r.get("tuning") for r in comparison["rows"])
    if len(comparison.get("seeds") or [0]) == 1 or not tuned:
        log("how sure: " + "; ".join(
            ([] if len(comparison.get("seeds") or [0]) > 1 else ["--seeds 3 repeats each training on 3 seeds"])
            + ([] if tuned else ["--tune 8 compares each method at its best of 8 settings"])))
    log(f"report: {Path(comparison['folder']) / 'report.html'}")
