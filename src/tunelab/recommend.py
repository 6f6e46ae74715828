"""Which method to use: measured after a comparison, or estimated before any training.

After a comparison the choice is the best validation metric among the methods within the
budget; methods whose paired bootstrap interval of the difference from the best includes 0 (or,
with several seeds, within the seeds' spread) count as tied and the cheapest of them wins (fewest
trainable weights, then least time). The test split is never looked at.

Before training, the guide: little data → prompt engineering, a moderate amount → PEFT (LoRA),
much data and compute → full fine-tuning; then stepped down while the estimate breaks the budget.
"""
from __future__ import annotations

import math
from typing import Any

from .measured import Measured

TIE = 0.01  # absolute, for metrics in [0, 1] (1 point of chrF/BLEU); relative for error metrics (mse, loss)
NAMES = {"full": "full fine-tuning", "lora": "LoRA", "adapter": "bottleneck adapters", "prompt": "prompt engineering",
         "ia3": "IA3"}
LITTLE_DATA_PER_CLASS = 32  # below this many training examples per class, prompts beat training
MUCH_DATA = 50_000  # above this many, full fine-tuning pays off when compute allows


def label(method: str) -> str:
    return NAMES.get(method, method)


def possessive(text: str) -> str:
    return text + ("'" if text.endswith("s") else "'s")


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def plural(method: str) -> bool:
    """"bottleneck adapters" takes a plural verb."""
    return label(method).endswith("s")


def _within_budget(row: dict[str, Any], budget: dict[str, Any]) -> str | None:
    minutes, memory = budget.get("max_minutes"), budget.get("max_memory_mb")
    if minutes is not None and row["fit_seconds"] / 60 > minutes:
        return f"{row['fit_seconds'] / 60:.1f} min > {minutes:g}"
    if memory is not None and row["peak_memory_mb"] > memory:
        return f"{row['peak_memory_mb']:.0f} MB > {memory:g}"
    return None


def recommend_measured(comparison: dict[str, Any], task, measured: Measured | None = None) -> dict[str, Any]:
    """The method to use, from the validation split, stated with how sure the choice is.

    A method is tied with the best (highest mean validation metric) when the paired interval of their
    difference includes 0, or, with several training seeds, when the difference of their means is within the
    seeds' spread (the standard deviation of the difference of one run of each). Among tied methods the one with
    fewer trainable weights, then less training time, wins. Without an interval (a metric that cannot be
    resampled, such as perplexity, or runs saved by an older tunelab) a method within `TIE` of the best is tied.
    Writes each row's paired `difference` from the best."""
    metric = comparison["metric"]
    lower = metric in task.lower_is_better
    budget = comparison.get("budget") or {}
    ok = [r for r in comparison["rows"] if r["status"] == "ok" and metric in r["validation"]]
    excluded = {r["method"]: _within_budget(r, budget) for r in ok if _within_budget(r, budget)}
    candidates = [r for r in ok if r["method"] not in excluded]
    if not candidates:
        text = "no method finished within the budget" if ok else "no method finished; see the failures above"
        return {"method": None, "best": None, "tied": [], "text": text, "excluded": excluded}

    def value(r):
        return r["validation"][metric]

    sign = 1 if lower else -1
    best = min(candidates, key=lambda r: (sign * value(r), *_cost(r), r["method"]))  # order-independent
    tolerance = TIE * abs(value(best)) if lower else TIE * (100 if metric in task.percent_metrics else 1)
    for r in ok:
        r["difference"] = None if r is best or measured is None else {
            split: measured.difference(r["method"], best["method"], split) for split in ("validation", "test")}
    why = {r["method"]: _tie(r, best, metric, tolerance) for r in candidates if r is not best}
    tied = sorted((r for r in candidates if r is best or why[r["method"]]),
                  key=lambda r: (sign * value(r), *_cost(r), r["method"]))  # best first, in any input order
    chosen = min(tied, key=lambda r: (*_cost(r), r["method"]))
    n = measured.sizes.get("validation") if measured else None
    sentences = [_headline(chosen, best, tied, why, metric, lower, n, comparison)]
    separated = [r for r in candidates if r is not best and not why[r["method"]]]
    if chosen is best and separated:
        runner = min(separated, key=lambda r: (sign * value(r), *_cost(r), r["method"]))
        sentences.append(f"The next, {label(runner['method'])}, {_gap(runner, lower, metric)}, a difference that "
                         f"{f'{n:,} examples' if n else 'the validation split'} resolve.")
    if chosen is not best and len(tied) < len(candidates) and measured is not None and n and _d(chosen):
        needed = measured.to_resolve(_d(chosen))
        if needed:
            sentences.append(f"Telling {label(chosen['method'])} and {label(best['method'])} apart would take about "
                             f"{_round(needed):,} validation examples.")
    if len(tied) == len(candidates) > 1 and measured is not None and n:
        widest = max((r for r in tied if r is not best), key=lambda r: abs(_d(r)["value"]) if _d(r) else 0)
        needed = measured.to_resolve(_d(widest)) if _d(widest) else None
        if needed:
            sentences.append(f"{n:,} validation examples cannot separate these methods: a difference of "
                             f"{abs(_d(widest)['value']):.3g} would need about {_round(needed):,}.")
    if chosen is best:
        smaller = [r for r in candidates if r["parameters"]["trainable"] < chosen["parameters"]["trainable"]]
        if smaller:
            runner = min(smaller, key=lambda r: (sign * value(r), *_cost(r), r["method"]))
            sentences.append(f"The best method with fewer trainable weights, {label(runner['method'])}, "
                             + _relative(runner, chosen, metric, lower) + ".")
    for method, reason in excluded.items():
        sentences.append(f"{cap(label(method))} {'were' if plural(method) else 'was'} left out by the budget "
                         f"({reason}).")
    failed = [r["method"] for r in comparison["rows"] if r["status"] != "ok"]
    if failed:
        sentences.append(f"Failed: {', '.join(failed)}.")
    sentences.append("Chosen on the validation split; the test split was not used.")
    return {"method": chosen["method"], "best": best["method"], "tied": [r["method"] for r in tied],
            "text": " ".join(sentences), "excluded": excluded, "validation": value(chosen), "tolerance": tolerance,
            "rule": {m: w for m, w in why.items()}}


def _d(row: dict[str, Any]) -> dict[str, Any] | None:
    return (row.get("difference") or {}).get("validation")


def _tie(row: dict[str, Any], best: dict[str, Any], metric: str, tolerance: float) -> str | None:
    """Why `row` counts as tied with the best ("interval", "seeds", "tolerance"), or None where it is not."""
    d = _d(row)
    if row.get("spread") and best.get("spread"):
        spread = math.hypot(row["spread"]["validation"].get(metric, 0), best["spread"]["validation"].get(metric, 0))
        if abs(row["validation"][metric] - best["validation"][metric]) <= spread:
            return "seeds"
    if d is not None:
        lo, hi = d["interval"]
        return "interval" if lo <= 0 <= hi else None
    return "tolerance" if abs(row["validation"][metric] - best["validation"][metric]) <= tolerance else None


def _headline(chosen, best, tied, why, metric, lower, n, comparison) -> str:
    level = f"{comparison.get('confidence', 0.9):.0%}"
    seeds = len(comparison.get("seeds") or [0])
    where = f"on {n:,} validation examples" if n else "on the validation split"
    mean = f", mean of {seeds} training seeds" if seeds > 1 else ""
    interval = (best.get("interval") or {}).get("validation")
    figure = f"{best['validation'][metric]:.4f}" + (f", {level} interval {interval[0]:.4f} … {interval[1]:.4f}"
                                                    if interval else "")
    if chosen is best:
        text = f"Best validation {metric}: {label(best['method'])} ({figure}{mean})."
        others = [r for r in tied if r is not best]
        if others:
            text += " " + "; ".join(f"{label(r['method'])} {'are' if plural(r['method']) else 'is'} tied with it "
                                    f"({_evidence(r, why[r['method']], level, metric)})" for r in others)
            text += f", but {'train' if len(others) > 1 or plural(others[0]['method']) else 'trains'} more weights."
        return text
    text = (f"{cap(label(chosen['method']))} and {label(best['method'])} are tied {where}{mean} "
            f"({_evidence(chosen, why[chosen['method']], level, metric)}); "
            f"{label(chosen['method'])} {'train' if plural(chosen['method']) else 'trains'} "
            f"{_share(chosen, best)} of {possessive(label(best['method']))} weights"
            f" in {chosen['fit_seconds'] / max(1e-9, best['fit_seconds']):.0%} of the time, so "
            f"{'they are' if plural(chosen['method']) else 'it is'} recommended.")
    others = [r for r in tied if r is not best and r is not chosen]
    if others:
        text += " Also tied, with more weights: " + "; ".join(
            f"{label(r['method'])} ({_evidence(r, why[r['method']], level, metric)})" for r in others) + "."
    return text


def _evidence(row, why: str, level: str, metric: str) -> str:
    d = _d(row)
    if why == "seeds":
        return f"difference of means {d['value'] if d else 0:+.4f}, within the seeds' spread"
    if why == "interval":
        lo, hi = d["interval"]
        return f"difference {d['value']:+.4f}, {level} paired interval {lo:+.4f} … {hi:+.4f}"
    return f"within {TIE} of the best; no interval for {metric}"


def _gap(row, lower: bool, metric: str) -> str:
    d = _d(row)
    if d is None:
        return f"has a validation {metric} of {row['validation'][metric]:.4f}"
    lo, hi = d["interval"]
    word = "higher" if d["value"] > 0 else "lower"
    return f"is {word} by {abs(d['value']):.4f} (paired interval {lo:+.4f} … {hi:+.4f})"


def _share(a, b) -> str:
    wa, wb = a["parameters"]["trainable"], b["parameters"]["trainable"]
    return "none" if wa == 0 else f"{wa / max(1, wb):.1%}"


def _round(n: int) -> int:
    """Two significant figures: the estimate is no finer than that."""
    return int(float(f"{n:.2g}"))


def _cost(row: dict[str, Any]) -> tuple[int, float]:
    """Cheaper: fewer trainable weights first (deterministic), then less training time."""
    return (row["parameters"]["trainable"], row["fit_seconds"])


def _relative(a: dict[str, Any], b: dict[str, Any], metric: str, lower: bool, plural_subject: bool = False) -> str:
    """"reaches 98% of full fine-tuning's f1 with 1.1% of its trainable weights in 45% of the time"."""
    va, vb = a["validation"][metric], b["validation"][metric]
    if lower:
        quality = (f"{'have' if plural_subject else 'has'} a validation {metric} of {va:.4f} against "
                   f"{possessive(label(b['method']))} {vb:.4f}")
    else:
        share = va / vb if vb else 0.0
        # A share just below 1 rounds to "100%", which reads as a draw: show the decimal that tells them apart.
        digits = 1 if share != 1 and round(share, 2) == 1 else 0
        quality = (f"{'reach' if plural_subject else 'reaches'} {share:.{digits}%} of "
                   f"{possessive(label(b['method']))} validation {metric} ({va:.4f} vs {vb:.4f})")
    wa, wb = a["parameters"]["trainable"], b["parameters"]["trainable"]
    weights = "with no trainable weights" if wa == 0 else f"with {wa / max(1, wb):.1%} of its trainable weights"
    time_share = a["fit_seconds"] / max(1e-9, b["fit_seconds"])
    return f"{quality} {weights} in {time_share:.0%} of the time"


def recommend_estimated(estimates: list[dict[str, Any]], n_train: int, n_classes: int,
                        budget: dict[str, Any]) -> dict[str, Any]:
    """The guide's choice from the data size, stepped down while the estimate breaks the budget."""
    available = {e["method"]: e for e in estimates if e.get("status") == "ok"}
    per_class = n_train / max(1, n_classes) if n_classes else n_train
    if per_class < LITTLE_DATA_PER_CLASS:
        order, why = ["prompt", "lora", "adapter", "full"], f"little data ({n_train} training examples)"
    elif n_train < MUCH_DATA:
        order, why = ["lora", "adapter", "prompt", "full"], f"a moderate amount of data ({n_train} training examples)"
    else:
        order, why = ["full", "lora", "adapter", "prompt"], f"much data ({n_train} training examples)"
    order = [m for m in order if m in available] + [m for m in available if m not in order]
    skipped = []
    for method in order:
        e = available[method]
        reason = _within_budget({"fit_seconds": e["fit_seconds"], "peak_memory_mb": e["peak_memory_mb"]}, budget)
        if reason is None:
            text = f"{cap(label(method))}: the guide for {why}"
            if skipped:
                text += "; " + "; ".join(skipped)
            text += (f". Estimated {e['fit_seconds'] / 60:.1f} min and {e['peak_memory_mb']:.0f} MB peak memory, "
                     f"{e['trainable']:,} trainable weights.")
            return {"method": method, "text": text}
        skipped.append(f"{label(method)} would break the budget ({reason})")
    return {"method": None, "text": "no method fits the budget: " + "; ".join(skipped)}
