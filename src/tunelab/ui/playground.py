"""The Playground tab: a comparison's finished runs loaded once, as `tunelab serve` loads them (LoRA/IA3 runs of
one base model share it as named adapters), each answering the same text side by side; and the Export button,
which is `tunelab export`."""
from __future__ import annotations

import threading
from pathlib import Path

from ..data import rows_to_examples
from ..errors import TunelabError
from ..export import export
from ..serve.models import Served, load, parse_specs, text_row

_loaded: dict[tuple, dict[str, Served]] = {}
_lock = threading.Lock()  # torch is called from one request at a time, and each comparison is loaded once


def models(runs: list[Path]) -> dict[str, Served]:
    """The runs loaded, keyed by their method's name; loaded again only when a run folder changed."""
    key = tuple((str(r), (r / "metrics.json").stat().st_mtime) for r in runs)
    with _lock:
        if key not in _loaded:
            _loaded.clear()  # one comparison's models in memory at a time
            _loaded[key] = load(parse_specs([f"{r.name}={r}" for r in runs]), log=lambda _: None)
        return _loaded[key]


def answer(runs: list[Path], text: str) -> list[list[str]]:
    """Each run's prediction for `text`: [method, prediction, details] rows, as `tunelab predict` writes them."""
    if not text.strip():
        raise TunelabError("type a text first")
    out = []
    served = models(runs)
    with _lock:
        for name, model in served.items():
            row = text_row(model.spec.cfg, model.task, text)
            examples = rows_to_examples([("playground", row)], model.spec.cfg.data, model.task, need_label=False)
            prediction = model.predict(examples)[0]
            # The input comes back in the row (under its role's name): the details are what the model added.
            details = {k: v for k, v in prediction.items() if k != "prediction" and v != text}
            out.append([name, str(prediction.get("prediction")), _short(details)])
    return out


def _short(details: dict) -> str:
    parts = []
    for key, value in details.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        parts.append(f"{key}: {value}")
    return "; ".join(parts)


def export_run(run: Path, merge: bool) -> Path:
    """`tunelab export RUN OUT [--merge]` into the comparison's `exports/` folder; an earlier export is replaced."""
    out = run.parent.parent / "exports" / (run.name + ("-merged" if merge else ""))
    export(run, out, merge=merge, overwrite=True, log=lambda _: None)
    return out
