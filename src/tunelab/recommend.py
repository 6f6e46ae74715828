"""Which method to use: measured after a comparison, or estimated before any training.

After a comparison the choice is the best validation metric among the methods within the
budget; methods within `TIE` of the best count as tied and the cheapest of them wins (fewest
trainable weights, then least time). The test split is never looked at.

Before training, the guide: little data → prompt engineering, a moderate amount → PEFT (LoRA),
much data and compute → full fine-tuning; then stepped down while the estimate breaks the budget.
"""
from __future__ import annotations

from typing import Any

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


def recommend_measured(comparison: dict[str, Any], task) -> dict[str, Any]:
    metric = comparison["metric"]
    lower = metric in task.lower_is_better
    budget = comparison.get("budget") or {}
    ok = [r for r in comparison["rows"] if r["status"] == "ok" and metric in r["validation"]]
    excluded = {r["method"]: _within_budget(r, budget) for r in ok if _within_budget(r, budget)}
    candidates = [r for r in ok if r["method"] not in excluded]
    if not candidates:
        text = "no method finished within the budget" if ok else "no method finished; see the failures above"
        return {"method": None, "text": text, "excluded": excluded}

    def value(r):
        return r["validation"][metric]

    sign = 1 if lower else -1
    best = min(candidates, key=lambda r: (sign * value(r), *_cost(r), r["method"]))  # order-independent
    tolerance = TIE * abs(value(best)) if lower else TIE * (100 if metric in task.percent_metrics else 1)
    tied = [r for r in candidates if abs(value(r) - value(best)) <= tolerance]
    chosen = min(tied, key=lambda r: (*_cost(r), r["method"]))
    sentences = []
    if chosen is best:
        # Not "X has the best": "bottleneck adapters has" would not read.
        sentences.append(f"Best validation {metric}: {label(chosen['method'])} ({value(chosen):.4f}).")
        # "cheaper" would read as faster, and a method with fewer weights can take longer: name the measure.
        smaller = [r for r in candidates if r["parameters"]["trainable"] < chosen["parameters"]["trainable"]]
        if smaller:
            runner = min(smaller, key=lambda r: (sign * value(r), *_cost(r), r["method"]))
            sentences.append(f"The best method with fewer trainable weights, {label(runner['method'])}, "
                             + _relative(runner, chosen, metric, lower) + ".")
    else:
        sentences.append(f"{cap(label(chosen['method']))} "
                         + _relative(chosen, best, metric, lower, plural(chosen["method"]))
                         + f" — within {tolerance:.3g} of the best, so the method with fewer trainable weights wins.")
    for method, why in excluded.items():
        sentences.append(f"{cap(label(method))} {'were' if plural(method) else 'was'} left out by the budget ({why}).")
    failed = [r["method"] for r in comparison["rows"] if r["status"] != "ok"]
    if failed:
        sentences.append(f"Failed: {', '.join(failed)}.")
    sentences.append("Chosen on the validation split; the test split was not used.")
    return {"method": chosen["method"], "text": " ".join(sentences), "excluded": excluded,
            "validation": value(chosen), "tolerance": tolerance}


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
