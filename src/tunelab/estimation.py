"""Estimates before training: trainable weights, peak memory and training time for each method.

Assumptions (printed with the estimates):
- time = model load + tokenisation + (steps per epoch × epochs) × seconds per step + one validation
  pass per epoch, where seconds per step and per evaluation batch are timed on a few real batches
  of the dataset ("calibration"); early stopping can only make the real run shorter;
- peak memory = the peak resident memory (or GPU allocation) of a process that loaded the model and
  ran the calibration steps — optimizer state and activations included — plus the copy of the best
  weights that training keeps;
- each method is calibrated in its own process, as `compare` trains it, so figures don't mix.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from .config import RunConfig, load_config

CALIBRATION_STEPS = 24
WARMUP_STEPS = 2
ASSUMPTIONS = [
    "training time = load + tokenise + steps x (timed seconds per step) + one validation pass per epoch; "
    "early stopping can only shorten it",
    "peak memory = peak resident memory (GPU: allocated) of a process that loaded the model and ran "
    f"{CALIBRATION_STEPS} timed training steps, plus the kept copy of the best weights",
    "the calibration uses real batches of the training split, so text lengths match the data",
]


def estimate(config: RunConfig | str | Path | dict, methods: list[str] | None = None,
             overrides: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    from .comparison import _base_dict, default_methods, method_config
    from .data import load_splits
    from .tasks import TASKS
    base = _base_dict(config, overrides)
    cfg = load_config(base)
    methods = methods or default_methods(cfg)
    splits = load_splits(cfg.data, TASKS.get(cfg.task).label_kind)
    rows = []
    for method in methods:
        method_cfg = load_config(method_config(base, method, Path(cfg.output)))
        log(f"calibrating {method} ({CALIBRATION_STEPS} timed steps)")
        rows.append(_calibrate_in_subprocess(method, method_cfg))
    return {"methods": rows, "n_train": len(splits.train), "n_classes": len(splits.labels),
            "epochs": cfg.train.epochs, "assumptions": ASSUMPTIONS}


def _calibrate_in_subprocess(method: str, cfg: RunConfig) -> dict[str, Any]:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        done = subprocess.run([sys.executable, "-m", "tunelab.estimation", str(path)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {"method": method, "status": "failed", "reason": last.removeprefix("error: ")}
    return {"method": method, "status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def calibrate(cfg: RunConfig) -> dict[str, Any]:
    """Time a few steps of `cfg`'s method in this process; what `_calibrate_in_subprocess` runs."""
    from .data import load_splits
    from .pipeline import prepare
    from .tasks import TASKS
    from .training.memory import PeakMemory

    splits = load_splits(cfg.data, TASKS.get(cfg.task).label_kind)
    with PeakMemory() as memory:
        start = time.perf_counter()
        adapted = prepare(cfg, splits, log=lambda _: None)
        load_seconds = time.perf_counter() - start
        if adapted.method.trains:
            result = _calibrate_training(adapted, splits, load_seconds)
        else:
            result = _calibrate_prompt(adapted, splits, load_seconds)
    peak = memory.device_peak_mb if memory.device_peak_mb is not None else memory.peak_mb
    result["peak_memory_mb"] = round(peak + result.pop("kept_copy_mb", 0.0), 1)
    return result


def _calibrate_training(adapted, splits, load_seconds: float) -> dict[str, Any]:
    import torch

    from .training.batches import Batches
    from .training.loop import parameter_groups
    from .training.precision import autocast, device

    cfg, task = adapted.cfg, adapted.task
    start = time.perf_counter()
    train_batches = Batches(task, adapted.tokenizer, splits.train, splits.labels, cfg.data.max_length)
    tokenise_seconds = time.perf_counter() - start
    model, dev, precision = adapted.model, device(), adapted.precision
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.train.weight_decay), lr=1e-5)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    batches = _calibration_batches(train_batches, cfg.train.batch_size, generator, WARMUP_STEPS + CALIBRATION_STEPS,
                                   cfg.train.group_by_length)
    model.train()
    step_times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        with autocast(precision, dev):
            loss = model(**{k: v.to(dev) for k, v in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= WARMUP_STEPS:
            step_times.append(time.perf_counter() - start)
    # One whole validation pass, as each epoch of the real run makes.
    start = time.perf_counter()
    adapted.scores(splits.validation, with_loss=True)  # the task's own pass: generating, for generation
    eval_seconds = time.perf_counter() - start
    params = adapted.parameters()
    step = sum(step_times) / len(step_times)
    steps = train_batches.n_batches(cfg.train.batch_size) * cfg.train.epochs
    seconds = (load_seconds + tokenise_seconds + steps * step
               + cfg.train.epochs * eval_seconds)
    kept = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / 2**20
    return {"fit_seconds": round(seconds, 1), "trainable": params["trainable"], "total": params["total"],
            "seconds_per_step": round(step, 4), "steps": steps, "load_seconds": round(load_seconds, 2),
            "kept_copy_mb": kept}


def _calibration_batches(train_batches, batch_size: int, generator, n: int, group_by_length: bool = False
                         ) -> list[dict]:
    """The longest batch (the activation peak, untimed as warm-up), then batches as training sees them.

    Shuffled, not sorted: a random batch is padded to its longest text, and that padding is part
    of the real cost per step. With `group_by_length`, batches spread evenly over the epoch: its
    first ones are the longest of their group.
    """
    longest = sorted(range(len(train_batches)), key=lambda i: -len(train_batches.features[i]["input_ids"]))
    out = [train_batches.batch(longest[:batch_size])]
    stride = max(1, train_batches.n_batches(batch_size) // max(1, n - 1)) if group_by_length else 1
    while len(out) < n:
        for j, batch in enumerate(train_batches.iterate(batch_size, generator, group_by_length)):
            if j % stride:
                continue
            out.append(batch)
            if len(out) == n:
                break
    return out


def _calibrate_prompt(adapted, splits, load_seconds: float) -> dict[str, Any]:
    """Prompt search cost: embedding every candidate input once; timed on a sample."""
    if adapted.method.scorer.generates:
        return _calibrate_prompt_generation(adapted, splits, load_seconds)
    from .methods.prompt import DEFAULT_LABEL_TEMPLATES, DEFAULT_TEMPLATES
    o = adapted.method.options
    templates = len(set(DEFAULT_TEMPLATES + o.templates))
    sample = [e.text for e in splits.validation[:64]]
    start = time.perf_counter()
    adapted.method.scorer.embed(sample)
    per_text = (time.perf_counter() - start) / len(sample)
    n_labels = len(splits.labels)
    texts = templates * (len(splits.validation) + min(256, len(splits.train)) + max(o.shots or [0]) * n_labels)
    texts += len(set(DEFAULT_LABEL_TEMPLATES + o.label_templates)) * n_labels * 3
    return {"fit_seconds": round(load_seconds + texts * per_text, 1), "trainable": 0,
            "total": adapted.parameters()["total"], "load_seconds": round(load_seconds, 2)}


def _calibrate_prompt_generation(adapted, splits, load_seconds: float) -> dict[str, Any]:
    """Generation prompt search cost: each candidate answers the search examples (or, searching by perplexity,
    scores their reference answers), then the chosen one answers validation and test; timed zero-shot on a
    sample, so demonstrations' longer prompts are not counted."""
    from .methods.prompt import Candidate
    from .methods.prompt_generation import LIKELIHOOD_METRICS
    scorer, o = adapted.method.scorer, adapted.method.options
    sample = splits.validation[:8]
    zero_shot = Candidate(scorer.task.options.template, shots=0)
    start = time.perf_counter()
    scorer.outputs(zero_shot, sample, with_loss=True)
    per_answer = (time.perf_counter() - start) / max(1, len(sample))
    metric = adapted.cfg.train.early_stopping.metric or adapted.task.default_metric
    start = time.perf_counter()
    scorer.search_value(zero_shot, sample, "loss")
    per_loss = (time.perf_counter() - start) / max(1, len(sample))
    searched = min(o.search_examples or len(splits.validation), len(splits.validation))
    per_search = per_loss if metric in LIKELIHOOD_METRICS else per_answer
    seconds = (load_seconds + len(scorer.candidates()) * searched * per_search
               + (len(splits.validation) + len(splits.test)) * per_answer)
    return {"fit_seconds": round(seconds, 1), "trainable": 0, "total": adapted.parameters()["total"],
            "load_seconds": round(load_seconds, 2)}


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


if __name__ == "__main__":  # the calibration process: one method, JSON on the last line of stdout
    from .errors import TunelabError
    try:
        print(json.dumps(calibrate(load_config(sys.argv[1]))))
    except TunelabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
