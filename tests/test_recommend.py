"""The recommendation: measured from validation, ties to the cheaper method, budgets, the guide."""
from __future__ import annotations

from tunelab.recommend import recommend_estimated, recommend_measured
from tunelab.tasks import TASKS

CLS = TASKS.get("classification")


def row(method, val_f1, trainable, seconds, memory=1000, test_f1=0.5):
    return {"method": method, "family": "x", "status": "ok", "validation": {"f1": val_f1},
            "test": {"f1": test_f1}, "parameters": {"trainable": trainable, "total": 10**7},
            "fit_seconds": seconds, "peak_memory_mb": memory}


def comparison(rows, **budget):
    return {"metric": "f1", "rows": rows, "budget": budget}


def test_best_validation_wins_and_the_test_split_is_never_looked_at():
    rows = [row("prompt", 0.70, 0, 10, test_f1=0.99), row("lora", 0.80, 10**5, 100),
            row("full", 0.84, 10**7, 300, test_f1=0.10)]
    rec = recommend_measured(comparison(rows), CLS)
    assert rec["method"] == "full"
    assert rec["text"].startswith("Best validation f1: full fine-tuning (0.8400).")
    assert "The best method with fewer trainable weights, LoRA, reaches 95% of full fine-tuning's validation f1" in rec["text"]
    assert "test split was not used" in rec["text"]


class Intervals:
    """A stand-in for `measured.Measured`: paired intervals of each method's difference from another, given."""

    def __init__(self, differences: dict[str, tuple[float, float, float]], n: int = 300):
        self.differences, self.sizes = differences, {"validation": n, "test": n}

    def difference(self, method, versus, split):
        value, lo, hi = self.differences[method]
        return {"versus": versus, "value": value, "interval": [lo, hi]}

    def to_resolve(self, difference, split="validation"):
        from tunelab.uncertainty import examples_to_resolve
        lo, hi = difference["interval"]
        return examples_to_resolve(self.sizes[split], (hi - lo) / 2, difference["value"])


def test_a_paired_interval_that_includes_zero_is_a_tie_and_the_method_with_fewer_weights_wins():
    """The issue's example: adapters 0.017 ahead of LoRA on 300 examples, interval −0.012 … 0.046."""
    rows = [row("lora", 0.7987, 222_338, 156), row("adapter", 0.8157, 374_690, 129), row("prompt", 0.70, 0, 20)]
    measured = Intervals({"lora": (-0.017, -0.046, 0.012), "prompt": (-0.1157, -0.16, -0.07)})
    rec = recommend_measured(comparison(rows), CLS, measured)
    assert rec["method"] == "lora" and rec["best"] == "adapter" and rec["tied"] == ["adapter", "lora"]
    assert rec["text"].startswith("LoRA and bottleneck adapters are tied on 300 validation examples (difference "
                                  "-0.0170, 90% paired interval -0.0460 … +0.0120); LoRA trains 59.3% of bottleneck "
                                  "adapters' weights in 121% of the time, so it is recommended.")
    # Half-width 0.029 at 300 examples; a difference of 0.017 needs (0.029 / 0.017)² × 300 ≈ 873 → 870.
    assert "Telling LoRA and bottleneck adapters apart would take about 870 validation examples." in rec["text"]
    assert rows[0]["difference"]["validation"]["interval"] == [-0.046, 0.012]
    assert rows[1]["difference"] is None  # the best has no difference from itself


def test_every_method_tied_with_the_best_is_named():
    """The demo: LoRA, adapters and full fine-tuning within each other's intervals, the prompt well below."""
    rows = [row("lora", 0.7987, 222_338, 434), row("adapter", 0.8160, 374_690, 404),
            row("full", 0.7979, 22_713_986, 562), row("prompt", 0.7512, 0, 31)]
    measured = Intervals({"lora": (-0.0173, -0.0499, 0.0188), "full": (-0.0181, -0.0488, 0.0106),
                          "prompt": (-0.0649, -0.1072, -0.0252)})
    rec = recommend_measured(comparison(rows), CLS, measured)
    assert rec["method"] == "lora" and rec["tied"] == ["adapter", "lora", "full"]
    assert ("Also tied, with more weights: full fine-tuning (difference -0.0181, 90% paired interval -0.0488 … "
            "+0.0106).") in rec["text"]
    assert "cannot separate" not in rec["text"]  # the prompt is separated


def test_an_interval_that_excludes_zero_separates_methods_even_when_close():
    rows = [row("lora", 0.835, 10**5, 100), row("full", 0.84, 10**7, 300)]
    rec = recommend_measured(comparison(rows), CLS, Intervals({"lora": (-0.005, -0.009, -0.001)}))
    assert rec["method"] == "full" and rec["tied"] == ["full"]
    assert ("The next, LoRA, is lower by 0.0050 (paired interval -0.0090 … -0.0010), a difference that 300 "
            "examples resolve.") in rec["text"]


def test_a_split_too_small_to_separate_anything_says_how_large_one_would_be():
    rows = [row("lora", 0.80, 10**5, 100), row("full", 0.83, 10**7, 300)]
    rec = recommend_measured(comparison(rows), CLS, Intervals({"lora": (-0.03, -0.09, 0.03)}))
    assert rec["method"] == "lora"
    # Half-width 0.06 at 300 examples; 0.03 needs (0.06 / 0.03)² = 4 times as many.
    assert "300 validation examples cannot separate these methods: a difference of 0.03 would need about 1,200." \
        in rec["text"]


def test_with_seeds_a_difference_of_means_within_the_seeds_spread_is_a_tie():
    rows = [row("lora", 0.80, 10**5, 100), row("full", 0.82, 10**7, 300)]
    rows[0]["spread"] = {"validation": {"f1": 0.012}}
    rows[1]["spread"] = {"validation": {"f1": 0.016}}  # the difference's spread: hypot(0.012, 0.016) = 0.02
    rec = recommend_measured({**comparison(rows), "seeds": [0, 1, 2]}, CLS,
                             Intervals({"lora": (-0.02, -0.035, -0.005)}))
    assert rec["method"] == "lora" and rec["rule"] == {"lora": "seeds"}
    assert "mean of 3 training seeds" in rec["text"] and "within the seeds' spread" in rec["text"]
    rows[1]["spread"] = {"validation": {"f1": 0.01}}  # now 0.0156 < 0.02, and the interval excludes 0
    assert recommend_measured({**comparison(rows), "seeds": [0, 1, 2]}, CLS,
                              Intervals({"lora": (-0.02, -0.035, -0.005)}))["method"] == "full"


def test_without_intervals_ties_fall_back_to_the_tolerance():
    """A metric that cannot be resampled (perplexity), or runs saved before validation predictions were."""
    rows = [row("lora", 0.835, 10**5, 100), row("full", 0.84, 10**7, 300)]
    rec = recommend_measured(comparison(rows), CLS)
    assert rec["method"] == "lora" and rec["rule"] == {"lora": "tolerance"}
    assert "within 0.01 of the best; no interval for f1" in rec["text"]


def test_the_runner_up_is_named_by_its_weights_and_bottleneck_adapters_take_plural_verbs():
    """Today's demo: adapters won and LoRA, with fewer weights, took longer; "the best cheaper method" misread."""
    rows = [row("lora", 0.7987, 222_338, 156), row("adapter", 0.8124, 374_690, 129), row("full", 0.70, 10**7, 246)]
    rec = recommend_measured(comparison(rows), CLS)
    assert rec["text"].startswith("Best validation f1: bottleneck adapters (0.8124). The next, LoRA, has a "
                                  "validation f1 of 0.7987")
    assert ("The best method with fewer trainable weights, LoRA, reaches 98% of bottleneck adapters' validation f1 "
            "(0.7987 vs 0.8124) with 59.3% of its trainable weights in 121% of the time") in rec["text"]
    rows = [row("adapter", 0.835, 10**5, 100), row("full", 0.84, 10**7, 300)]
    assert "Bottleneck adapters and full fine-tuning are tied" in recommend_measured(comparison(rows), CLS)["text"]
    assert "bottleneck adapters train 1.0% of full fine-tuning's weights in 33% of the time, so they are " \
        "recommended" in recommend_measured(comparison(rows), CLS)["text"]
    rows = [row("lora", 0.80, 10**5, 100), row("adapter", 0.84, 10**6, 900)]
    rec = recommend_measured(comparison(rows, max_minutes=10), CLS)
    assert "Bottleneck adapters were left out by the budget (15.0 min > 10)" in rec["text"]


def test_budget_leaves_methods_out_and_failures_are_named():
    rows = [row("lora", 0.80, 10**5, 100), row("full", 0.84, 10**7, 900, memory=5000),
            {"method": "adapter", "family": "peft", "status": "failed", "reason": "boom"}]
    rec = recommend_measured(comparison(rows, max_minutes=10, max_memory_mb=None), CLS)
    assert rec["method"] == "lora"
    assert "Full fine-tuning was left out by the budget (15.0 min > 10)" in rec["text"]
    assert "Failed: adapter" in rec["text"]


def test_deterministic():
    rows = [row("prompt", 0.8, 0, 10), row("lora", 0.8, 10**5, 100), row("full", 0.8, 10**7, 300)]
    texts = {recommend_measured(comparison(list(r)), CLS)["text"] for r in (rows, rows[::-1], rows[1:] + rows[:1])}
    assert len(texts) == 1


def test_the_guide_before_training():
    est = [{"method": m, "status": "ok", "fit_seconds": s, "peak_memory_mb": mem, "trainable": t}
           for m, s, mem, t in (("prompt", 30, 700, 0), ("lora", 300, 1000, 10**5), ("full", 900, 2000, 10**7))]
    assert recommend_estimated(est, 40, 2, {})["method"] == "prompt"  # 20 per class: little data
    assert recommend_estimated(est, 4000, 2, {})["method"] == "lora"
    assert recommend_estimated(est, 100_000, 2, {})["method"] == "full"
    budgeted = recommend_estimated(est, 100_000, 2, {"max_minutes": 10})
    assert budgeted["method"] == "lora" and "full fine-tuning would break the budget (15.0 min > 10)" in budgeted["text"]
