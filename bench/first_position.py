"""What computing a BERT-style classifier's last layer for the first position only (`training/first_token.py`)
gains: tunelab's loop with it turned off and on, alternating, each run in its own process (`bench/speed.py`'s
cases, seeds 1, 2, …), printing examples/s, peak resident memory and test accuracy of each.

    python bench/first_position.py [--cases minilm-lora,minilm-full] [--repeats 3] [--examples 3000]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def run(case: str, on: bool, seed: int, examples: int, precision: str) -> dict:
    if not on:  # the loop's context and the scoring's: the whole last layer, as before
        import tunelab.training.loop as loop
        loop.first_position_only = lambda model: contextlib.nullcontext(False)
    import speed
    return speed.run_one("tunelab", case, examples, precision, [f"train.seed={seed}"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="minilm-lora,minilm-full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run(*json.loads(args.child))
        result.pop("correct", None)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    from tunelab.training.precision import device, resolve
    precision = resolve(args.precision, device())
    print(f"precision {precision}")
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for repeat in range(args.repeats):
            for on in ((False, True) if repeat % 2 == 0 else (True, False)):  # alternate which goes first
                command = [sys.executable, __file__, "--child",
                           json.dumps([case, on, repeat + 1, args.examples, precision])]
                done = subprocess.run(command, capture_output=True, text=True)
                lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if done.returncode or not lines:
                    raise SystemExit(f"{case} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
                r = json.loads(lines[-1][len("RESULT "):])
                runs[on].append(r)
                print(f"  {case:12} first position only {'on ' if on else 'off'} seed {repeat + 1}: "
                      f"{r['examples_per_s']:7.1f} examples/s, peak {r['peak_rss_mib']:6.0f} MiB, "
                      f"{r['test_metric']:.4f} {r['metric']}", flush=True)
        off, on = ([x["examples_per_s"] for x in runs[k]] for k in (False, True))
        print(f"{case}: off {statistics.mean(off):.1f}, on {statistics.mean(on):.1f} examples/s (means), "
              f"x{statistics.mean(on) / statistics.mean(off):.3f}; per seed "
              + ", ".join(f"x{b / a:.3f}" for a, b in zip(off, on)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
