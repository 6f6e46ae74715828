"""Estimates against measurements: predicted vs measured training time and peak memory per method.

Runs `tunelab estimate` on a config, then `tunelab compare` on the same config (finished runs in
the comparison folder are reused), and prints both side by side with the error. The target is
within ±25% for every trained method. Run with `make bench` (uses the demo config by default).

    python bench/estimate_accuracy.py [configs/demo.yaml] [--methods prompt,lora,adapter,full]
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tunelab.comparison import compare  # noqa: E402
from tunelab.estimation import estimate  # noqa: E402

TOLERANCE = 0.25


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default="configs/demo.yaml")
    parser.add_argument("--methods", default="prompt,lora,adapter,full")
    args = parser.parse_args()
    methods = args.methods.split(",")
    predicted = {r["method"]: r for r in estimate(args.config, methods)["methods"]}
    measured = {r["method"]: r for r in compare(args.config, methods, log=lambda _: None)["rows"]}
    print(f"{'method':9}{'time est':>10}{'time run':>10}{'error':>8}{'mem est':>10}{'mem run':>10}{'error':>8}")
    worst = 0.0
    for method in methods:
        p, m = predicted[method], measured[method]
        if p["status"] != "ok" or m["status"] != "ok":
            print(f"{method:9} failed: {p.get('reason') or m.get('reason')}")
            continue
        t_err = p["fit_seconds"] / m["fit_seconds"] - 1
        m_err = p["peak_memory_mb"] / m["peak_memory_mb"] - 1
        if method != "prompt":
            worst = max(worst, abs(t_err), abs(m_err))
        print(f"{method:9}{p['fit_seconds']:>9.0f}s{m['fit_seconds']:>9.0f}s{t_err:>+8.0%}"
              f"{p['peak_memory_mb']:>8.0f}MB{m['peak_memory_mb']:>8.0f}MB{m_err:>+8.0%}")
    verdict = "within" if worst <= TOLERANCE else "OUTSIDE"
    print(f"largest error of a trained method: {worst:.0%} ({verdict} ±{TOLERANCE:.0%})")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
