"""Does training cost per example stay flat as the data grows? (`make bench`)

MiniLM + LoRA (tunelab's defaults, batch 16, fp32 or what `auto` picks), one epoch on 1k, 4k and 16k training
examples of Rotten Tomatoes, each size in its own process, sizes alternating in order across repeats. Rotten
Tomatoes has 12,750 reviews, so the 16k set repeats 3,250 of them: the cost of a step depends on the lengths of
its texts, not on whether they were seen before, and no test metric is read here.

Figures per size: milliseconds per training example (training steps only; the best repeat), its ratio to the 1k
figure, and memory: the process's peak resident set, and the growth of the resident set during training over
what it held once the data were tokenised and the model loaded, and whether it still grows late in training: the
peak resident set of the second half of training against the first half's (sampled every 0.2 s). Memory that
rises only until the allocator has met the batch shapes stops early in a long run; anything held per example
trained would keep rising through the second half.

    python bench/scaling.py [--sizes 1000,4000,16000] [--repeats 2] [--json bench/results/scaling.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HOLD_OUT = 0.02  # validation and test, each: the loop needs them to exist, this bench reads neither


def write_data(path: Path, train_examples: int) -> None:
    from tunelab.data.builtin import rotten_tomatoes
    reviews = rotten_tomatoes()
    rows = round(train_examples / (1 - 2 * HOLD_OUT))
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        for i in range(rows):
            out.writerow([reviews[i % len(reviews)].text, reviews[i % len(reviews)].label])


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def run_one(data: str, model: str, overrides: list[str]) -> dict:
    from tunelab.pipeline import data_for, prepare
    from tunelab.settings import load_config
    from tunelab.tasks import task_for
    from tunelab.training.batches import Batches
    from tunelab.training.loop import train
    from tunelab.training.precision import device
    from tunelab.training.state import Training

    cfg = load_config({"task": "classification", "model": model, "method": {"name": "lora"},
                       "data": {"source": data, "max_length": 128,
                                "split": {"validation": HOLD_OUT, "test": HOLD_OUT}},
                       "train": {"epochs": 1, "batch_size": 16, "early_stopping": {"patience": 0},
                                 "checkpoint_every": 0}}, overrides)
    splits = data_for(cfg, task_for(cfg))
    adapted = prepare(cfg, splits, log=lambda _: None)
    batches = Batches(adapted.task, adapted.tokenizer, splits.train, splits.labels, cfg.data.max_length)
    learning_rate = cfg.train.learning_rate or type(adapted.method).default_learning_rate
    loaded = rss_mib()
    samples: list[tuple[float, float]] = []  # (seconds into training, resident MiB), every 0.2 s
    done = threading.Event()
    start = time.perf_counter()
    sampler = threading.Thread(target=_sample_rss, args=(samples, start, done), daemon=True)
    sampler.start()
    training = Training.start(adapted.model, cfg.train, learning_rate, batches.n_batches(cfg.train.batch_size),
                              adapted.precision, device())
    train(training, batches, lambda: {"loss": 0.0}, "loss", adapted.task.better, log=lambda _: None)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    # The kernel's high-water mark lags the resident counters /proc/self/statm reads (they are synced per thread
    # in batches of pages): a sample came out 0.15 MiB above ru_maxrss in one run. The peak is the higher of both,
    # rounded as the samples are (rounding keeps the order: no half of training above the peak).
    peak = max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, *(m for _, m in samples)])
    # Does memory grow with the examples trained, or only until the allocator has met the batch shapes? The peak
    # of the second half of training against the first half's: a leak, or anything held per example, adds to it.
    first = max([m for t, m in samples if t <= seconds / 2] or [loaded])
    second = max([m for t, m in samples if t > seconds / 2] or [first])
    return {"train_examples": len(batches), "seconds": seconds, "ms_per_example": 1000 * seconds / len(batches),
            "tokens": sum(len(f["input_ids"]) for f in batches.features), "precision": adapted.precision,
            "rss_loaded_mib": loaded, "peak_rss_mib": round(peak, 1), "training_growth_mib": peak - loaded,
            "rss_first_half_mib": round(first, 1), "rss_second_half_mib": round(second, 1),
            "growth_in_second_half_mib": round(round(second, 1) - round(first, 1), 1)}


def _sample_rss(samples: list[tuple[float, float]], start: float, done: threading.Event) -> None:
    while True:
        samples.append((time.perf_counter() - start, rss_mib()))
        if done.wait(0.2):
            return


def child(data: str, model: str, overrides: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps([data, model, overrides])],
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"the run on {data} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,4000,16000", help="training examples, comma-separated")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default="bench/results/scaling.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_one(*json.loads(args.child))), flush=True)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    runs: dict[int, list[dict]] = {n: [] for n in sizes}
    with tempfile.TemporaryDirectory() as folder:
        files = {n: Path(folder, f"rt-{n}.csv") for n in sizes}
        for n, path in files.items():
            write_data(path, n)
        for repeat in range(args.repeats):
            for n in (sizes if repeat % 2 == 0 else sizes[::-1]):
                r = child(str(files[n]), args.model, args.override)
                runs[n].append(r)
                print(f"  {n:6} examples, repeat {repeat + 1}: {r['ms_per_example']:6.2f} ms/example, "
                      f"peak {r['peak_rss_mib']:.0f} MiB", flush=True)
    best = {n: min(rs, key=lambda r: r["ms_per_example"]) for n, rs in runs.items()}
    base = best[sizes[0]]
    print(f"\n| training examples | ms per example | × {sizes[0]:,}'s | peak MiB | growth while training MiB | "
          "peak of 1st half MiB | 2nd half − 1st MiB |\n|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for n in sizes:
        r = best[n]
        r["vs_smallest"] = r["ms_per_example"] / base["ms_per_example"]
        r["repeats_ms_per_example"] = [x["ms_per_example"] for x in runs[n]]
        r["peak_rss_mib"] = max(x["peak_rss_mib"] for x in runs[n])
        results.append(r)
        print(f"| {r['train_examples']:,} | {r['ms_per_example']:.2f} ({min(r['repeats_ms_per_example']):.2f}–"
              f"{max(r['repeats_ms_per_example']):.2f}) | {r['vs_smallest']:.2f} | {r['peak_rss_mib']:.0f} | "
              f"{r['training_growth_mib']:.0f} | {r['rss_first_half_mib']:.0f} | {r['growth_in_second_half_mib']:+.0f} |")
    print("(ms per example: the best repeat (range over repeats); peak: the highest over repeats; the halves are "
          "of the best repeat's training time, resident memory sampled every 0.2 s)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
