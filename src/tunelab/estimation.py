"""Estimates before training: trainable weights, peak memory and training time for each method.

Assumptions (printed with the estimates):
- time = model load + tokenisation + (steps per epoch × epochs) × seconds per step + one validation
  pass per epoch, where seconds per step and per evaluation batch are timed on a few real batches
  of the dataset ("timing"); early stopping can only make the real run shorter;
- peak memory = the peak resident memory (or GPU allocation) of a process that loaded the model and
  ran the timed steps — optimizer state and activations included — plus the copy of the best
  weights that training keeps;
- each method is calibrated in its own process, as `compare` trains it, so figures don't mix.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from .config import RunConfig
from .data import load_splits
from .errors import TunelabError
from .methods.base import TIMED_STEPS
from .pipeline import prepare
from .plan import base_dict, default_methods, method_config
from .settings import load_config
from .tasks import TASKS
from .training.memory import PeakMemory

ASSUMPTIONS = [
    "training time = load + tokenise + steps x (timed seconds per step) + one validation pass per epoch; "
    "early stopping can only shorten it",
    "peak memory = peak resident memory (GPU: allocated) of a process that loaded the model and ran "
    f"{TIMED_STEPS} timed training steps, plus the kept copy of the best weights",
    "the timed steps use real batches of the training split, so text lengths match the data",
]


def estimate(config: RunConfig | str | Path | dict, methods: list[str] | None = None,
             overrides: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    base = base_dict(config, overrides)
    cfg = load_config(base)
    methods = methods or default_methods(cfg)
    splits = load_splits(cfg.data, TASKS.get(cfg.task))
    rows = []
    for method in methods:
        method_cfg = load_config(method_config(base, method, Path(cfg.output)))
        log(f"timing {method} ({TIMED_STEPS} training steps)")
        rows.append(_time_in_subprocess(method, method_cfg))
    return {"methods": rows, "n_train": len(splits.train), "n_classes": len(splits.labels),
            "epochs": cfg.train.epochs, "assumptions": ASSUMPTIONS}


def _time_in_subprocess(method: str, cfg: RunConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        done = subprocess.run([sys.executable, "-m", "tunelab.estimation", str(path)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {"method": method, "status": "failed", "reason": last.removeprefix("error: ")}
    return {"method": method, "status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def time_method(cfg: RunConfig) -> dict[str, Any]:
    """Time a few steps of `cfg`'s method in this process (`Method.estimate`); what `_time_in_subprocess`
    runs."""
    splits = load_splits(cfg.data, TASKS.get(cfg.task))
    with PeakMemory() as memory:
        start = time.perf_counter()
        adapted = prepare(cfg, splits, log=lambda _: None)
        result = adapted.method.estimate(splits, load_seconds=time.perf_counter() - start)
    peak = memory.device_peak_mb if memory.device_peak_mb is not None else memory.peak_mb
    result["peak_memory_mb"] = round(peak + result.pop("kept_copy_mb", 0.0), 1)
    return result


def format_estimates(result: dict[str, Any]) -> list[str]:
    lines = [f"{'method':10}{'trainable':>14}{'est. time':>12}{'est. peak memory':>19}"]
    for r in result["methods"]:
        if r["status"] != "ok":
            lines.append(f"{r['method']:10}  failed: {r['reason']}")
            continue
        lines.append(f"{r['method']:10}{r['trainable']:>14,}{r['fit_seconds'] / 60:>10.1f} m"
                     f"{r['peak_memory_mb']:>16.0f} MB")
    lines.append("assumptions: " + "; ".join(result["assumptions"]))
    return lines


if __name__ == "__main__":  # the timing process: one method, JSON on the last line of stdout
    try:
        print(json.dumps(time_method(load_config(sys.argv[1]))))
    except TunelabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
