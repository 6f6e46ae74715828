"""What the Results and Runs tabs show, read from comparison folders as `tunelab report` reads them: the table
(`report.table`), the figures `compare` wrote for report.html (`figures/*.png`), the recommendation, and learning
curves drawn by the report's own function from each run's `history.jsonl` — the live one in the run's temporary
folder while it trains."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..report import plots
from ..report.table import table_rows
from ..tasks import TASKS


def comparisons(output: str | Path) -> list[Path]:
    """The comparison folders under `output` (those with a comparison.json), newest first."""
    root = Path(output)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.glob("*/comparison.json")]
    return sorted(found, key=lambda p: (p / "comparison.json").stat().st_mtime, reverse=True)


def comparison(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / "comparison.json"
    return json.loads(path.read_text()) if path.is_file() else None


def table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = table_rows(data)
    return rows[0], rows[1:]


def figures(folder: str | Path) -> list[tuple[str, str]]:
    """report.html's figures as (png path, caption): quality against cost first, then curves and the rest."""
    paths = sorted(Path(folder, "figures").glob("*.png"), key=lambda p: (not p.name.startswith("quality"), p.name))
    return [(str(p), p.stem.replace("_", " ")) for p in paths]


def recommendation(data: dict[str, Any]) -> str:
    return (data.get("recommendation") or {}).get("text") or "no recommendation (no method finished)"


def histories(folder: Path, methods: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each method's history so far: the finished run's file, else the one its training appends to."""
    out = {}
    for method in methods:
        runs = folder / "runs"
        done = runs / method / "history.jsonl"
        live = sorted(runs.glob(f".{method}.partial-*/history.jsonl"), key=lambda p: p.stat().st_mtime)
        path = done if done.is_file() else (live[-1] if live else None)
        if path is not None:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]
            if rows:
                out[method] = rows
    return out


def curves_png(folder: Path, methods: list[str], task: str, metric: str | None) -> bytes | None:
    """The report's learning-curve figure of the runs so far (None before the first logged step)."""
    found = histories(folder, methods)
    if not found:
        return None
    metric = metric or TASKS.get(task).default_metric
    lower = metric in TASKS.get(task).lower_is_better
    best = {}  # a finished run's kept epoch gets the report's ring; a run still training has none yet
    for method in found:
        done = folder / "runs" / method / "metrics.json"
        best[method] = json.loads(done.read_text()).get("best_epoch") if done.is_file() else None
    return plots.learning_curves(found, best, metric, lower, plots.colors(methods))


def runs(folder: Path) -> list[Path]:
    """The finished runs of a comparison (those with a saved model)."""
    return sorted(p for p in (folder / "runs").glob("*") if (p / "model").is_dir() and (p / "metrics.json").is_file())
