"""Does `torch.compile` pay for tunelab's training steps on this machine? Times one epoch of MiniLM steps eager
and compiled (inductor, dynamic shapes, so that batches of every length share one graph), in two processes.

    python bench/compile_probe.py [--method lora|full] [--examples 1000]

Prints, for each mode: the first step (which holds the compilation), the mean of the later steps, the epoch's
examples/s, and the steady examples/s after five warm-up steps. Measured on the 2-core CPU machines (fp32, LoRA,
800 training examples): compiling took 56 s, and then ran at 1.04x the eager steps — it does not pay back its
compile time in a comparison's runs, so tunelab trains eager.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(mode: str, method: str, examples: int) -> str:
    import torch

    from tunelab.pipeline import data_for, prepare
    from tunelab.settings import load_config
    from tunelab.tasks import task_for
    from tunelab.training.batches import Batches
    from tunelab.training.state import Training
    cfg = load_config({"model": "minilm", "method": {"name": method},
                       "data": {"source": "rotten_tomatoes", "max_examples": examples, "max_length": 128},
                       "train": {"epochs": 1, "batch_size": 16, "precision": "fp32"}})
    splits = data_for(cfg, task_for(cfg))
    adapted = prepare(cfg, splits, log=lambda _: None)
    batches = Batches(adapted.task, adapted.tokenizer, splits.train, splits.labels, cfg.data.max_length)
    training = Training.start(adapted.model, cfg.train, 5e-4, batches.n_batches(16), "fp32", torch.device("cpu"))
    if mode == "compile":
        training.model = torch.compile(adapted.model, dynamic=True)
    started, steps = time.perf_counter(), []
    for batch in batches.iterate(16, torch.Generator().manual_seed(0), group_by_length=True):
        step = time.perf_counter()
        training.step(batch)
        steps.append(time.perf_counter() - step)
    total = time.perf_counter() - started
    return (f"{mode:8} first step {steps[0]:5.1f} s, later steps {sum(steps[1:]) / len(steps[1:]):.3f} s, "
            f"epoch {len(batches) / total:5.1f} examples/s, steady {16 * len(steps[5:]) / sum(steps[5:]):5.1f} "
            f"examples/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="lora", choices=["lora", "full"])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--mode", choices=["eager", "compile"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(run(args.mode, args.method, args.examples))
        return 0
    for mode in ("eager", "compile"):  # each in its own process: no compiled graph or warm cache carries over
        subprocess.run([sys.executable, __file__, "--mode", mode, "--method", args.method,
                        "--examples", str(args.examples)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
