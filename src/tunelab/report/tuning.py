"""The hyper-parameter search of each tuned method (`compare --tune N`): every trial's validation metric against
its learning rate, one panel per method, and a table of the trials per method.

A row's `tuning` is `tunelab.tune.summary`: trials with their state, params, value (a pruned trial's value is
the last one it reported, at fewer epochs than a completed trial), and the best and the untuned (`default`)
setting. Only rows with a `tuning` get a section, so an older comparison.json shows none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .plots import _drop_crowded_ticks, _png

AXIS = "learning_rate"  # what a search moves most, and what decides whether a method trains at all
STATES = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}


@dataclass
class Tuned:
    """One method's search as the report shows it: a summary line and the trials as text cells."""
    method: str
    summary: str
    header: list[str]
    rows: list[list[str]]


def tuned(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Method → its search, for the finished rows that were tuned."""
    return {r["method"]: r["tuning"] for r in rows if r.get("status") == "ok" and r.get("tuning")}


def tables(searches: dict[str, dict[str, Any]]) -> list[Tuned]:
    return [Tuned(m, _summary(t), *_trials_table(t)) for m, t in searches.items()]


def _order(tuning: dict[str, Any]) -> list[dict[str, Any]]:
    """Completed trials best first, then pruned ones by their last value (reached in fewer epochs, so not
    comparable with a completed trial's), then those without a value; ties by trial number."""
    sign = -1 if tuning.get("direction", "maximize") == "maximize" else 1
    rank = {"COMPLETE": 0, "PRUNED": 1}
    return sorted(tuning["trials"], key=lambda t: (t["value"] is None, rank.get(t["state"], 2),
                                                   sign * (t["value"] or 0), t["number"]))


def _trials_table(tuning: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    params = list(dict.fromkeys(k for t in tuning["trials"] for k in t["params"]))
    header = ["trial", "state", *(_name(p) for p in params), f"validation {tuning['metric']}", "epochs", "seconds",
              "note"]
    best = (tuning.get("best") or {}).get("number")
    rows = []
    for t in _order(tuning):
        notes = (["best: trained for the comparison"] if t["number"] == best else []) + \
                (["untuned setting"] if _is_default(t, tuning) else []) + ([t["error"]] if t.get("error") else [])
        rows.append([str(t["number"]), STATES.get(t["state"], t["state"].lower()),
                     *(_param(t["params"].get(p)) for p in params),
                     "" if t["value"] is None else f"{t['value']:.4f}",
                     "" if t.get("epochs") is None else str(t["epochs"]),
                     "" if t.get("seconds") is None else f"{t['seconds']:.0f}", "; ".join(notes)])
    return header, rows


def _is_default(trial: dict[str, Any], tuning: dict[str, Any]) -> bool:
    if "default" in trial:  # tune.summary flags the trial that ran the untuned setting
        return bool(trial["default"])
    default = tuning.get("default")
    return bool(default) and trial["params"] == default["params"]


def _summary(tuning: dict[str, Any]) -> str:
    trials = tuning["trials"]
    counts: dict[str, int] = {}
    for t in trials:
        state = STATES.get(t["state"], t["state"].lower())
        counts[state] = counts.get(state, 0) + 1
    seconds = tuning.get("seconds") or sum(t.get("seconds") or 0 for t in trials)
    text = (f"{len(trials)} trial{'s' if len(trials) != 1 else ''} "
            f"({', '.join(f'{n} {state}' for state, n in counts.items())}) in {_duration(seconds)}.")
    best, default = tuning.get("best"), tuning.get("default")
    if best:
        setting = ", ".join(f"{_name(k)} {_param(v)}" for k, v in best["params"].items())
        text += f" Best: trial {best['number']} ({setting}), validation {tuning['metric']} {best['value']:.4f}"
        if default and default.get("value") is not None:
            text += f", against {default['value']:.4f} at the untuned setting ({best['value'] - default['value']:+.4f})"
        text += "."
    else:
        text += " No trial completed: the method trained at its untuned setting."
    return text


def figure(searches: dict[str, dict[str, Any]], palette: dict[str, str], lower_is_better: bool
           ) -> tuple[Figure, str] | None:
    """One panel per tuned method (its own learning-rate range, a shared metric axis) and the caption that says
    how sensitive each method is; None when no trial has a learning rate and a value."""
    drawn = {m: t for m, t in searches.items() if _points(t)}
    if not drawn:
        return None
    metric = next(iter(drawn.values()))["metric"]
    columns = min(len(drawn), 4)
    lines = math.ceil(len(drawn) / columns)
    fig = Figure(figsize=(3.5 * columns + 0.4, 3.1 * lines + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(lines, columns, squeeze=False, sharey=True).ravel()
    for ax, (method, tuning) in zip(axes, drawn.items()):
        _panel(ax, method, tuning, palette[method])
    for ax in axes[len(drawn):]:
        ax.set_visible(False)
    for row in range(lines):
        axes[row * columns].set_ylabel(f"validation {metric}\n({'lower' if lower_is_better else 'higher'} is better)")
    grey = "#555555"
    handles = [Line2D([], [], ls="", marker="o", color=grey, label="completed trial"),
               Line2D([], [], ls="", marker="o", mfc="white", mec=grey, mew=1.5,
                      label="pruned trial (last value reported)"),
               Line2D([], [], ls="", marker="o", ms=13, mfc="none", mec="black", mew=1.6, label="best trial (kept)"),
               Line2D([], [], ls="--", color=grey, label="untuned setting")]
    # Under the panels, in as many rows as their width needs (one narrow panel: two rows of two).
    legend_rows = 1 if columns > 1 else 2
    fig.tight_layout(rect=(0, (0.25 * legend_rows + 0.05) / fig.get_figheight(), 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=4 // legend_rows, fontsize=8, frameon=False)
    fig.draw_without_rendering()
    for ax in axes[:len(drawn)]:
        _drop_crowded_ticks(ax)  # the locator's choice is an estimate of the labels' width; this is the measure
    sensitivity = "; ".join(filter(None, (_sensitivity(m, t) for m, t in drawn.items())))
    caption = (f"Validation {metric} of each trial of the search against its learning rate (log scale). Filled: "
               "completed trials; hollow: trials stopped early (pruned) at the last value they reported; ringed: the "
               "best trial, whose setting the comparison trained; dashed: the untuned setting. "
               + (f"Sensitivity: {sensitivity}." if sensitivity else ""))
    return fig, caption


def png(searches: dict[str, dict[str, Any]], palette: dict[str, str], lower_is_better: bool
        ) -> tuple[bytes, str] | None:
    drawn = figure(searches, palette, lower_is_better)
    return (_png(drawn[0]), drawn[1]) if drawn else None


def _points(tuning: dict[str, Any]) -> list[tuple[dict[str, Any], float]]:
    """(trial, learning rate) of the trials the panel can draw: a positive learning rate and a value."""
    return [(t, float(t["params"][AXIS])) for t in tuning["trials"]
            if isinstance(t["params"].get(AXIS), (int, float)) and t["params"][AXIS] > 0 and t["value"] is not None
            and t["state"] in ("COMPLETE", "PRUNED")]


def _panel(ax, method: str, tuning: dict[str, Any], color: str) -> None:
    points = _points(tuning)
    done = [(lr, t["value"]) for t, lr in points if t["state"] == "COMPLETE"]
    pruned = [(lr, t["value"]) for t, lr in points if t["state"] == "PRUNED"]
    if done:
        ax.scatter(*zip(*done), s=42, color=color, zorder=3)
    if pruned:
        ax.scatter(*zip(*pruned), s=42, facecolors="white", edgecolors=color, linewidths=1.5, zorder=3)
    best = (tuning.get("best") or {}).get("number")
    for t, lr in points:
        if t["number"] == best:
            ax.scatter([lr], [t["value"]], s=170, facecolors="none", edgecolors="black", linewidths=1.6, zorder=4)
    default = tuning.get("default")
    if default and default.get("value") is not None:
        ax.axhline(default["value"], ls="--", color=color, lw=1.2, zorder=2)
    ax.set_xscale("log")
    lrs = [lr for _, lr in points]
    # Rates people write (1e-4, 2e-4, 5e-4), as many as a panel's width holds: matplotlib labels a 1.5-decade
    # axis 2×10⁻⁴, 3×10⁻⁴ ... and, at 1-2-5 steps, 2.3 decades ran together ("1e-52e-5").
    decades = math.log10(max(lrs) / min(lrs)) * 1.3  # with the margins
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 1.8 else (1.0, 3.0) if decades <= 3.5
                                          else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _rate(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.12, y=0.15)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_title(method, fontsize=10, color=color, fontweight="bold")
    ax.grid(True, alpha=0.3, which="major")


def _sensitivity(method: str, tuning: dict[str, Any]) -> str:
    done = [(lr, t["value"]) for t, lr in _points(tuning) if t["state"] == "COMPLETE"]
    if not done:
        return ""
    values, lrs = [v for _, v in done], [lr for lr, _ in done]
    if len(done) == 1:
        return f"{method} {values[0]:.2f} at a learning rate of {_rate(lrs[0])} (one completed trial)"
    # "from … to …", not a dash: "4e-4–5e-3" reads as a subtraction.
    return (f"{method} ranges from {min(values):.2f} to {max(values):.2f} over learning rates from "
            f"{_rate(min(lrs))} to {_rate(max(lrs))} ({len(done)} completed trials)")


def _name(param: str) -> str:
    return param.replace("_", " ")


def _param(value: Any) -> str:
    if value is None:
        return "–"  # a parameter this trial did not draw
    if isinstance(value, float) and not value.is_integer():
        return _rate(value, 3) if abs(value) < 1e-2 else f"{value:.3g}"  # enough digits to set it again
    return str(value)


def _rate(v: float, digits: int = 2) -> str:
    """1e-4, 3e-3, 1.2e-3: learning rates as people write them (not 0.00012 nor 1.2×10⁻⁴)."""
    mantissa, exponent = f"{v:.{digits - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"
