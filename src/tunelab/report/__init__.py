"""The report of a comparison: `report.html` (self-contained) and `report.md` (+ `figures/`).

Both are rendered from one `Report`, read from the comparison folder that `tunelab compare`
wrote: `comparison.json` for the table and the advice, each run folder's `metrics.json`,
`history.jsonl` and `prompt_search.jsonl` for the details. `tunelab report DIR` rebuilds them.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..tasks import TASKS
from . import html, markdown, plots, tuning
from .content import GENERATION_PROMPT_COLUMNS, PROMPT_COLUMNS, TOP_PROMPTS, Bars, Image, Report  # noqa: F401
from .table import table_rows

def write_report(folder: str | Path) -> tuple[Path, Path]:
    """Write `report.html` and `report.md` (+ `figures/`) into a comparison folder; returns their paths.

    Every file is written under a temporary name and renamed when complete, so an interrupted
    run leaves the previous report (or none), never half of one.
    """
    folder = Path(folder)
    report = build(folder)
    scratch = Path(tempfile.mkdtemp(prefix=".report-", dir=folder))
    try:
        figures = scratch / "figures"
        figures.mkdir()
        for image in report.images():
            (figures / f"{image.name}.png").write_bytes(image.png)
        (scratch / "report.md").write_text(markdown.render(report, "figures"), encoding="utf-8")
        (scratch / "report.html").write_text(html.render(report), encoding="utf-8")
        target = folder / "figures"
        if target.exists():  # swapped whole, so figures of methods no longer compared do not linger
            target.rename(scratch / "figures.old")
        figures.rename(target)
        os.replace(scratch / "report.md", folder / "report.md")
        os.replace(scratch / "report.html", folder / "report.html")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder / "report.html", folder / "report.md"


def build(folder: Path) -> Report:
    """Everything the report shows, read from the comparison folder."""
    path = folder / "comparison.json"
    if not path.is_file():
        raise TunelabError(f"{path} not found; `tunelab report` needs a folder written by `tunelab compare`")
    comparison = json.loads(path.read_text())
    metric = comparison["metric"]
    lower = metric in TASKS.get(comparison["task"]).lower_is_better
    palette = plots.colors(comparison["methods"] + [r["method"] for r in comparison["rows"]])
    ok = [r for r in comparison["rows"] if r["status"] == "ok"]
    failed = {r["method"]: r.get("reason", "unknown reason") for r in comparison["rows"] if r["status"] != "ok"}
    runs = {r["method"]: _run_folder(folder, r) for r in ok}
    metrics = {m: _json(run / "metrics.json") or {} for m, run in runs.items()}
    recommendation = comparison.get("recommendation") or {}
    chosen = recommendation.get("method")

    charts, notes = _charts(ok, metric, lower, palette, _bars(comparison, ok, metrics)), []
    missing = [r["method"] for r in ok if metric not in r["test"]]
    if missing:
        notes.append(f"Not in the charts, as they have no test {metric}: {', '.join(missing)}.")
    histories = {m: _jsonl(run / "history.jsonl") for m, run in runs.items()}
    best = {m: metrics[m].get("best_epoch") for m in runs}
    curves_png = plots.learning_curves(histories, best, metric, lower, palette)
    curves = Image("learning_curves", "Learning curves", curves_png,
                   "Training loss (averaged over logging steps), validation loss and validation "
                   f"{metric} per epoch. A ring marks the epoch whose weights were kept.") if curves_png else None

    confusions = []
    for m in runs:
        cm = (metrics[m].get("test") or {}).get("confusion_matrix")
        if cm:
            confusions.append(Image(f"confusion_{_safe(m)}", f"Confusion matrix: {m}",
                                    plots.confusion(m, cm["labels"], cm["matrix"])))

    warnings = {}
    for r in comparison["rows"]:
        m = r["method"]
        if r["status"] != "ok" or not metrics[m].get("epochs_run", r.get("epochs_run")):
            warnings[m] = []  # failed, or nothing trained: nothing to check
        else:
            warnings[m] = (metrics[m].get("diagnostics") or {}).get("warnings", r.get("warnings", []))

    prompt_search = {m: _prompt_search(run, metric) for m, run in runs.items()
                     if (run / "prompt_search.jsonl").is_file()}
    searches = tuning.tuned(ok)
    drawn = tuning.png(searches, palette, lower)
    return Report(title=f"Comparison: {comparison['name']}", facts=_facts(comparison, lower),
                  recommended=chosen, recommendation=recommendation.get("text", "no recommendation was made"),
                  table=_drop_empty_columns(table_rows(comparison), failed), failed=failed, charts=charts,
                  curves=curves, confusions=confusions, warnings=warnings, prompt_search=prompt_search, notes=notes,
                  tied=list(recommendation.get("tied") or []), tuning=tuning.tables(searches),
                  tuning_figure=Image("tuning", "Hyper-parameter search", *drawn) if drawn else None)


def _bars(comparison: dict[str, Any], ok: list[dict[str, Any]], metrics: dict[str, dict[str, Any]]) -> Bars:
    """The bars are the rows' bootstrap intervals of the charts' split; a comparison written before tunelab
    measured intervals has none, and its captions say nothing of bars."""
    split = "test"  # the split the charts plot
    with_bar = [r["method"] for r in ok if (r.get("interval") or {}).get(split)]
    if not with_bar:
        return Bars(split, "", "")
    level = f"{comparison.get('confidence', 0.9):.0%}"
    # The bootstrap's own count first; else what the first run recorded of its splits.
    n = (comparison.get("sizes") or {}).get(split) or next(
        (m.get("splits", {}).get(split) for m in metrics.values() if m.get("splits", {}).get(split)), None)
    over = f"the {n} {split} examples" if n else f"the {split} examples"
    resamples = f" ({comparison['resamples']} resamples)" if comparison.get("resamples") else ""
    caption = f" Bars: {level} bootstrap interval over {over}{resamples}."
    seeds = len(comparison.get("seeds") or [0])
    if seeds > 1:
        # A method that trains nothing runs once: its seed changes nothing.
        once = [r for r in ok if len(r.get("runs") or [r]) == 1]
        caption += f" Points are the mean of {seeds} training seeds"
        if once:
            why = "" if any(r["parameters"]["trainable"] for r in once) else \
                f", as {'it trains' if len(once) == 1 else 'they train'} nothing"
            caption += f" ({', '.join(r['method'] for r in once)}: one run{why})"
        caption += "."
    without = [r["method"] for r in ok if r["method"] not in with_bar and comparison["metric"] in r["test"]]
    if without:
        caption += f" No interval was computed for {', '.join(without)}."
    return Bars(split, f"{level} interval", caption)


def _charts(ok: list[dict[str, Any]], metric: str, lower: bool, palette: dict[str, str], bars: Bars
            ) -> list[Image]:
    with_metric = [r for r in ok if metric in r["test"]]
    if not with_metric:
        return []
    untrained = [r["method"] for r in with_metric if r["parameters"]["trainable"] == 0]
    zero = (f" {', '.join(untrained)} trains nothing and is drawn at the position labelled 0." if untrained else "")
    search = f" For {', '.join(untrained)}, the time is the search over candidate prompts." if untrained else ""
    out = []
    for cost, name, title, caption in (
            ("parameters", "quality_vs_parameters", f"Test {metric} vs. trainable parameters",
             "Trainable parameters on a log axis." + zero),
            ("time", "quality_vs_time", f"Test {metric} vs. training time", "Training time." + search)):
        points = [plots.Point(r["method"], r["parameters"]["trainable"] if cost == "parameters" else r["fit_seconds"],
                              r["test"][metric], palette[r["method"]], _interval(r, bars.split))
                  for r in with_metric]
        caption += (" The dashed line joins the Pareto frontier: the methods (outlined) that no other method "
                    "beats at the same or lower cost." + bars.caption)
        out.append(Image(name, title, plots.quality_vs_cost(points, metric, lower, cost, bars.legend), caption))
    return out


def _interval(row: dict[str, Any], split: str) -> tuple[float, float] | None:
    interval = (row.get("interval") or {}).get(split)
    return (float(interval[0]), float(interval[1])) if interval else None


def _drop_empty_columns(table: list[list[str]], failed: dict[str, str]) -> list[list[str]]:
    """Without the columns no finished method has a value in (a regression has no test accuracy)."""
    finished = [row for row in table[1:] if row[0] not in failed]
    keep = [i for i in range(len(table[0])) if i < 3 or any(row[i] for row in finished)]
    return [[row[i] for i in keep] for row in table]


def _facts(comparison: dict[str, Any], lower: bool) -> list[tuple[str, str]]:
    facts = [("task", comparison["task"]), ("dataset", str(comparison["dataset"])), ("model", str(comparison["model"])),
             ("methods", ", ".join(comparison["methods"])),
             ("metric", f"{comparison['metric']} ({'lower' if lower else 'higher'} is better)"),
             ("split seed", str(comparison.get("seed")))]
    if comparison.get("seeds"):  # written since comparisons train on several seeds
        facts.append(("training seeds", ", ".join(str(s) for s in comparison["seeds"])))
    if comparison.get("confidence"):
        facts.append(("intervals", f"{comparison['confidence']:.0%} bootstrap"
                      + (f", {comparison['resamples']} resamples" if comparison.get("resamples") else "")))
    budget = {k: v for k, v in (comparison.get("budget") or {}).items() if v is not None}
    if budget:
        facts.append(("budget", ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in budget.items())))
    facts.append(("written", datetime.datetime.now().strftime("%Y-%m-%d %H:%M")))
    return facts


def _prompt_search(run: Path, metric: str) -> tuple[list[str], list[list[str]], int]:
    """The best candidate prompts (the file is sorted best first), as text cells; and how many were tried."""
    candidates = _jsonl(run / "prompt_search.jsonl")
    chosen = (_json(run / "model" / "prompt.json") or {}).get("chosen")
    score = f"validation_{metric}"
    # Every candidate's fields: an uncalibrated candidate has no `calibration`, a calibrated one does.
    keys = [k for k in dict.fromkeys(k for c in candidates for k in c) if not k.startswith("validation_")]
    names = PROMPT_COLUMNS if "label_template" in keys else GENERATION_PROMPT_COLUMNS
    header = ["rank"] + [names.get(k, k) for k in keys] + [f"validation {metric}", "chosen"]
    rows = []
    for i, c in enumerate(candidates, start=1):
        picked = chosen is not None and all(c.get(k) == v for k, v in chosen.items())
        if i <= TOP_PROMPTS or picked:  # the kept prompt always shows, even when ties push it down the list
            value = c.get(score)
            rows.append([str(i)] + [_cell(k, c) for k in keys] + ["" if value is None else f"{value:.4f}",
                                                                  "✓" if picked else ""])
    return header, rows, len(candidates)


def _cell(key: str, candidate: dict[str, Any]) -> str:
    if key not in candidate:
        return "–"  # a field that does not apply to this candidate
    value = candidate[key]
    if key == "weight" and not candidate.get("shots"):
        return "–"  # zero-shot: no prototypes to weigh
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "verbalizer":
        return {"label": "label names", "words": "verbalizers"}.get(value, str(value))
    if key == "calibration":
        return {"inputs": "training inputs", "content_free": "content-free inputs"}.get(value, str(value))
    return str(value).replace("\n", "\\n")  # a template's line breaks, visible in one table cell


def _run_folder(folder: Path, row: dict[str, Any]) -> Path:
    # The runs sit inside the comparison folder; prefer that over the recorded path so a moved folder still works.
    inside = folder / "runs" / row["method"]
    return inside if inside.is_dir() or not row.get("run_folder") else Path(row["run_folder"])


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
