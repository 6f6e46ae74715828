"""The comparison's results table as text cells: the console (`tunelab compare`), report.md and report.html
show the same cells."""
from __future__ import annotations

from typing import Any

from ..tasks import TASKS


def shown_metrics(comparison: dict[str, Any]) -> list[str]:
    """The test metrics of the table: the chosen one first, then the task's usual ones (or the loss)."""
    metric = comparison["metric"]
    usual = TASKS.get(comparison["task"]).shown_metrics if comparison.get("task") in TASKS else ()
    return [metric] + [m for m in (usual or ("loss",)) if m != metric]


def table_rows(comparison: dict[str, Any]) -> list[list[str]]:
    """The results table as text cells (shared by the console, report.md and report.html).

    The main metric shows how sure it is: ± half the bootstrap interval with one training seed, ± the standard
    deviation over seeds with several; and each method's paired difference from the recommended one."""
    metric = comparison["metric"]
    shown = shown_metrics(comparison)
    seeds = len(comparison.get("seeds") or [0])
    level = f"{comparison.get('confidence', 0.9):.0%}"
    sure = f" (mean ± sd, {seeds} seeds)" if seeds > 1 else f" (± {level} interval)"
    best = (comparison.get("recommendation") or {}).get("best")
    header = ["method", "family", *(f"test {m}" + (sure if m == metric else "") for m in shown),
              f"validation {metric}{sure}", f"validation {metric} − {best}'s ({level} paired interval)",
              "trainable params", "trainable %", "train time (s)", "peak memory (MB)", "saved size (MB)",
              "predict (ex/s)"]
    if not best or not any(r.get("difference") for r in comparison["rows"]):
        del header[len(shown) + 3]
    out = [header]
    for r in comparison["rows"]:
        if r["status"] != "ok":
            out.append([r["method"], r["family"], "failed: " + r["reason"]] + [""] * (len(header) - 3))
            continue
        cells = [r["method"], r["family"], *(_sure(r, "test", m, metric, seeds) for m in shown),
                 _sure(r, "validation", metric, metric, seeds)]
        if len(header) == len(shown) + 10:
            cells.append(_difference(r, best))
        out.append(cells + [f"{r['parameters']['trainable']:,}", f"{r['parameters']['trainable_percent']:.2f}",
                            f"{r['fit_seconds']:.0f}", f"{r['peak_memory_mb']:.0f}", f"{r['saved_size_mb']:.2f}",
                            _rate(r['predict_examples_per_second'])])
    return out


def _sure(row: dict[str, Any], split: str, metric: str, main: str, seeds: int) -> str:
    """"0.8160 ±0.0220": the value and how sure it is (only the main metric has an interval)."""
    value = row[split].get(metric)
    if value is None:
        return ""
    if metric != main:
        return _fmt(value)
    if seeds > 1 and row.get("spread"):
        return f"{value:.4f} ±{row['spread'][split].get(metric, 0):.4f}"
    interval = (row.get("interval") or {}).get(split)
    return f"{value:.4f} ±{(interval[1] - interval[0]) / 2:.4f}" if interval else _fmt(value)


def _difference(row: dict[str, Any], best: str) -> str:
    if row["method"] == best:
        return "(best)"
    d = (row.get("difference") or {}).get("validation")
    if not d:
        return ""
    lo, hi = d["interval"]
    return f"{d['value']:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def _rate(v: float) -> str:
    """Examples per second: generating runs below one, which a whole number would show as 0."""
    return f"{v:.0f}" if v >= 10 else f"{v:.2g}"


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"
