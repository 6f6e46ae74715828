"""Run several methods on the same splits with the same seed, side by side, and recommend one.

Each method trains in its own process (`tunelab train`), which gives every method a clean peak
memory figure and keeps a crash or an out-of-memory kill to that one method: it is recorded as
failed with its reason and the others still run. Finished runs are reused when the command is
repeated with the same config.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from .config import RunConfig, _merge, differences, load_config
from .errors import ConfigError, TunelabError
from .methods import METHODS
from .recommend import recommend_measured
from .training.checkpoint import checkpoint_folder


def default_methods(cfg: RunConfig) -> list[str]:
    """Every registered method that fits the task (prompt scores with encoders and decoders alike)."""
    return [name for name, method in METHODS.items() if cfg.task in method.tasks]


def method_config(base: dict[str, Any], name: str, folder: Path) -> dict[str, Any]:
    """The config of one method in the comparison: the shared config, the method's own options.

    A method's block under `methods:` may hold a `train:` block whose keys replace the shared `train:` ones for
    that method alone: a learning rate right for LoRA (1e-3) would wreck full fine-tuning (5e-5)."""
    cfg = {k: v for k, v in base.items() if k not in ("method", "methods")}
    block = base.get("method") or {}
    options = {k: v for k, v in block.items() if k != "name"} if block.get("name") == name else {}
    own = dict((base.get("methods") or {}).get(name) or {})
    train = own.pop("train", None)
    options.update(own)
    if train:  # merged like overrides: `train: {early_stopping: {patience: 0}}` keeps the shared metric
        cfg["train"] = _merge(cfg.get("train") or {}, train)
    cfg["method"] = {"name": name, **options}
    cfg["output"] = str(folder / "runs")
    cfg["name"] = name
    return cfg


def compare(config: RunConfig | str | Path | dict, methods: list[str] | None = None,
            overrides: list[str] | None = None, *, output: str | Path = "comparisons", name: str | None = None,
            overwrite: bool = False, max_minutes: float | None = None, max_memory_mb: float | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train each method, write `comparison.json` and the report; returns the comparison."""
    base = _base_dict(config, overrides)
    cfg = load_config(base)
    methods = methods or default_methods(cfg)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError([f"--methods: {METHODS.unknown(m)}" for m in unknown])
    for m in methods:  # every method's config is validated before anything trains
        load_config(method_config(base, m, Path(".")))
    folder = Path(output) / (name or cfg.name or _default_name(cfg))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, method in enumerate(methods, start=1):
        log(f"[{i}/{len(methods)}] {method}")
        method_cfg = load_config(method_config(base, method, folder))
        rows.append(_run_method(method, method_cfg, folder, overwrite, log))
    comparison = {"name": folder.name, "folder": str(folder), "task": cfg.task, "model": cfg.model,
                  "dataset": cfg.data.source, "seed": cfg.data.split.seed, "methods": methods,
                  "metric": cfg.train.early_stopping.metric or _task(cfg).default_metric,
                  "budget": {"max_minutes": max_minutes, "max_memory_mb": max_memory_mb}, "rows": rows}
    comparison["recommendation"] = recommend_measured(comparison, _task(cfg))
    tmp = folder / ".comparison.json.partial"
    tmp.write_text(json.dumps(comparison, indent=2) + "\n")
    tmp.replace(folder / "comparison.json")  # written whole or not at all
    from .report import write_report
    write_report(folder)
    _print_table(comparison, log)
    return comparison


def _task(cfg: RunConfig):
    from .tasks import TASKS
    return TASKS.get(cfg.task)


def _base_dict(config, overrides) -> dict[str, Any]:
    if isinstance(config, RunConfig):
        data = config.to_dict()
    elif isinstance(config, dict):
        data = dict(config)
    else:
        from .config import read_yaml
        data = read_yaml(config)
    if overrides:
        from .config import parse_overrides
        data = _merge(data, parse_overrides(overrides))
    return data


def _default_name(cfg: RunConfig) -> str:
    source = cfg.data.source if cfg.data.source.isidentifier() else Path(cfg.data.source).stem
    return f"{source}-{Path(cfg.model).name}"


def _run_method(method: str, cfg: RunConfig, folder: Path, overwrite: bool, log) -> dict[str, Any]:
    run = folder / "runs" / method
    wanted = cfg.to_dict()
    if (run / "metrics.json").is_file() and not overwrite:
        had = _as_now(yaml.safe_load((run / "config.yaml").read_text()))
        changed = differences(had, wanted)
        if not changed:
            log(f"  reusing the finished run {run}")
            return _row(method, run)
        raise TunelabError(f"{run} was trained with another config ({'; '.join(changed[:3])}); pass --name NEW for a "
                           f"new comparison, or --overwrite to retrain")
    config_path = folder / "runs" / f".{method}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(wanted, sort_keys=False))
    command = [sys.executable, "-m", "tunelab.cli", "train", str(config_path)] + (["--overwrite"] if overwrite else [])
    if checkpoint_folder(run).is_dir():  # the method was interrupted in an earlier comparison: go on from there
        command.append("--resume")
        log(f"  resuming from its checkpoint in {checkpoint_folder(run)}")
    started = time.time()
    log_path = folder / "runs" / f"{method}.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        last = ""
        try:
            for line in process.stdout:
                log_file.write(line)
                if line.strip():
                    last = line.strip()
                    log(f"  {line.rstrip()}")
            status = process.wait()
        except BaseException:  # Ctrl-C or SIGTERM here: the method's run stops too, and cleans up after itself
            process.terminate()
            process.wait()
            raise
        finally:
            config_path.unlink(missing_ok=True)  # the method's config lives in its run folder once it has one
    if status != 0:
        reason = _failure_reason(status, last)
        log(f"  {method} failed: {reason} (log: {log_path})")
        return {"method": method, "family": METHODS.get(method).family, "status": "failed", "reason": reason,
                "seconds": round(time.time() - started, 1), "log": str(log_path)}
    return _row(method, run)


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


def _row(method: str, run: Path) -> dict[str, Any]:
    m = json.loads((run / "metrics.json").read_text())
    size = sum(p.stat().st_size for p in (run / "model").rglob("*") if p.is_file())
    return {"method": method, "family": m["family"], "status": "ok", "run_folder": str(run),
            "test": _scalars(m["test"]), "validation": _scalars(m["validation"]),
            "parameters": m["parameters"], "fit_seconds": m["time"]["fit_seconds"],
            "peak_memory_mb": m["memory"]["device_peak_mb"] or m["memory"]["peak_rss_mb"],
            "saved_size_mb": round(size / 2**20, 2),
            "predict_examples_per_second": m["time"]["test_examples_per_second"],
            "epochs_run": m["epochs_run"], "warnings": m.get("diagnostics", {}).get("warnings", [])}


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def shown_metrics(comparison: dict[str, Any]) -> list[str]:
    """The test metrics of the table: the chosen one first, then the task's usual ones (or the loss)."""
    from .tasks import TASKS
    metric = comparison["metric"]
    usual = TASKS.get(comparison["task"]).shown_metrics if comparison.get("task") in TASKS else ()
    return [metric] + [m for m in (usual or ("loss",)) if m != metric]


def table_rows(comparison: dict[str, Any]) -> list[list[str]]:
    """The results table as text cells (shared by the console, report.md and report.html)."""
    metric = comparison["metric"]
    shown = shown_metrics(comparison)
    header = ["method", "family", *(f"test {m}" for m in shown),
              f"validation {metric}", "trainable params", "trainable %", "train time (s)", "peak memory (MB)",
              "saved size (MB)", "predict (ex/s)"]
    out = [header]
    for r in comparison["rows"]:
        if r["status"] != "ok":
            out.append([r["method"], r["family"], "failed: " + r["reason"]] + [""] * (len(header) - 3))
            continue
        out.append([r["method"], r["family"], *(_fmt(r["test"].get(m)) for m in shown),
                    _fmt(r["validation"].get(metric)), f"{r['parameters']['trainable']:,}",
                    f"{r['parameters']['trainable_percent']:.2f}", f"{r['fit_seconds']:.0f}",
                    f"{r['peak_memory_mb']:.0f}", f"{r['saved_size_mb']:.2f}", _rate(r['predict_examples_per_second'])])
    return out


def _rate(v: float) -> str:
    """Examples per second: generating runs below one, which a whole number would show as 0."""
    return f"{v:.0f}" if v >= 10 else f"{v:.2g}"


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _print_table(comparison: dict[str, Any], log) -> None:
    rows = table_rows(comparison)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    log("")
    for r in rows:
        log("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    log("")
    log(f"recommendation: {comparison['recommendation']['text']}")
    log(f"report: {Path(comparison['folder']) / 'report.html'}")
