"""Training speed of tunelab against the Hugging Face `Trainer`, side by side in one run (`make bench`).

For each case (model × method × task), three recipes train the same prepared model on the same tokenised
examples, one epoch, the same batch size, learning rate, warm-up, weight decay and clipping:

  tunelab   tunelab's loop with its defaults (what `tunelab train` does)
  hf        `Trainer` with its default arguments (random order; `DataCollatorWithPadding` pads each batch)
  hf-best   `Trainer` with its best flags on this machine: `train_sampling_strategy="group_by_length"`, and
            bf16 where tunelab's probe finds it faster than fp32 (tunelab then uses bf16 too)

Every run is its own process (peak memory is the process's own), and the recipes alternate within each repeat so
that drift in the machine's load hits them alike; the best repeat of each is kept for speed. Repeat k trains with
seed k, so the test metric is a mean over seeds and its difference to the Trainer's is stated with the seeds'
spread. All three use the model tunelab prepares (the same trainable weights: peft's default LoRA targets plus
the task head), so what differs is the loop: order of the examples, padding, optimizer and step.

Figures: examples/s and tokens/s (non-padding tokens) of the training steps alone (model loading, tokenising
and evaluation are outside the clock); the ratio to each Trainer recipe; peak resident memory; the test metric
after the epoch (accuracy, or chrF for generation), computed by the same code for all; and useful training FLOP/s
as a fraction of a GEMM peak measured in this run (`gemm_peak`). Useful FLOPs count non-padding tokens only:

  forward   2 × (weights of the linear layers) per token, plus attention 4 × layers × hidden × length per token
  backward  the forward again (gradients of the inputs, needed whenever anything below is trained: LoRA sits in
            every layer), plus 2 × (trained linear weights) per token (gradients of those weights)

so full fine-tuning counts the classic 6 × weights per token, LoRA about 4 ×. A BERT-style classifier's head reads
the first position alone, so there the last layer's products other than keys and values, its attention and the
head count for that position only (`tunelab.training.first_token`): the work whose result is used, whether or not
a recipe does more. Results also go to a JSON file.

    python bench/speed.py [--cases minilm-lora,minilm-full,smollm2-lora,smollm2-generation] [--repeats 3]
                          [--examples 3000] [--smollm2-examples 200] [--json bench/results/speed.json]
                          [--override KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RECIPES = ("tunelab", "hf", "hf-best")
CASES = {  # name: (model, method, task, dataset)
    "minilm-lora": ("minilm", "lora", "classification", "rotten_tomatoes"),
    "minilm-full": ("minilm", "full", "classification", "rotten_tomatoes"),
    "smollm2-lora": ("smollm2-135m", "lora", "classification", "rotten_tomatoes"),
    "smollm2-generation": ("smollm2-135m", "lora", "generation", "bible_parallel"),
}
DEFAULT_CASES = "minilm-lora,minilm-full,smollm2-lora,smollm2-generation"


def case_config(case: str, examples: int, precision: str, overrides: list[str]):
    from tunelab.settings import load_config
    model, method, task, source = CASES[case]
    # A large test split (and a small validation one, which only the methods' own runs use) so that the test
    # metric's interval is narrow enough to tell recipes apart: ±2.5 points at 900 examples and 75% accuracy.
    data = {"source": source, "max_examples": examples, "max_length": 128,
            "split": {"validation": 0.05, "test": 0.3}}
    cfg = {"task": task, "model": model, "data": data, "method": {"name": method},
           "train": {"epochs": 1, "batch_size": 16 if model == "minilm" else 8, "precision": precision,
                     "early_stopping": {"patience": 0}, "checkpoint_every": 0}}
    if task == "generation":
        cfg["generation"] = {"template": "Translate English to French:\n{source}\n", "max_new_tokens": 32}
        data["max_length"] = 96
    return load_config(cfg, overrides)


# --- one run, in its own process ----------------------------------------------------------------------------

def run_one(recipe: str, case: str, examples: int, precision: str, overrides: list[str]) -> dict:
    import torch

    from tunelab.pipeline import data_for, prepare
    from tunelab.tasks import task_for
    from tunelab.training.batches import Batches

    cfg = case_config(case, examples, precision, overrides)
    task = task_for(cfg)
    splits = data_for(cfg, task)
    adapted = prepare(cfg, splits, log=lambda _: None)
    batches = Batches(adapted.task, adapted.tokenizer, splits.train, splits.labels, cfg.data.max_length)
    lengths = [len(f["input_ids"]) for f in batches.features]
    learning_rate = cfg.train.learning_rate or type(adapted.method).default_learning_rate
    torch.manual_seed(cfg.train.seed)
    if recipe == "tunelab":
        seconds = _train_tunelab(cfg, adapted, batches, learning_rate)
    else:
        # The Trainer as its users get it: PyTorch's own attention kernels, cuDNN's included (tunelab turns that one
        # off on a GPU when it picks the device, see `training.precision.device`).
        if torch.cuda.is_available():
            torch.backends.cuda.enable_cudnn_sdp(True)
        seconds = _train_trainer(cfg, adapted, batches, learning_rate, best=recipe == "hf-best")
    test_examples = splits.test[:40] if cfg.task == "generation" else splits.test  # generating is slow
    test, outputs = adapted.evaluate_with_outputs(test_examples)
    predictions = adapted.task.predictions(outputs, splits.labels)
    metric = "chrf" if cfg.task == "generation" else "accuracy"
    # 90% interval of an accuracy (normal approximation of the binomial); chrF is corpus-level: none here.
    half_width = 1.645 * (test[metric] * (1 - test[metric]) / len(test_examples)) ** 0.5 if metric == "accuracy" \
        else None
    return {"recipe": recipe, "case": case, "precision": adapted.precision, "examples": len(batches),
            "tokens": sum(lengths), "seconds": seconds, "examples_per_s": len(batches) / seconds,
            "tokens_per_s": sum(lengths) / seconds, "flops": useful_flops(adapted.model, lengths),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            # On a GPU, the allocator's peak over the whole run (training and the test's evaluation).
            "device_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "metric": metric, "test_metric": float(test[metric]), "test_examples": len(test_examples),
            "test_metric_90": half_width, "threads": torch.get_num_threads(),
            "correct": [int(p == e.label) for p, e in zip(predictions, test_examples)] if metric == "accuracy" else None}


def _train_tunelab(cfg, adapted, batches, learning_rate: float) -> float:
    from tunelab.training.loop import train
    from tunelab.training.precision import device
    from tunelab.training.state import Training
    _synchronize()
    start = time.perf_counter()
    training = Training.start(adapted.model, cfg.train, learning_rate, batches.n_batches(cfg.train.batch_size),
                              adapted.precision, device())
    train(training, batches, lambda: {"loss": 0.0}, "loss", adapted.task.better, log=lambda _: None)
    _synchronize()
    return time.perf_counter() - start


def _train_trainer(cfg, adapted, batches, learning_rate: float, best: bool) -> float:
    import torch
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, Trainer, TrainingArguments
    rows = []
    for i, feature in enumerate(batches.features):
        row = {k: v for k, v in feature.items() if k != "example"}
        if cfg.task != "generation":  # generation features carry their token labels (-100 on the prompt)
            row["labels"] = batches.targets[batches.example_of[i]].item()
        rows.append(row)
    collator = DataCollatorForSeq2Seq(adapted.tokenizer, padding=True) if cfg.task == "generation" \
        else DataCollatorWithPadding(adapted.tokenizer)
    steps = batches.n_batches(cfg.train.batch_size)
    with tempfile.TemporaryDirectory() as out:
        flags = {"train_sampling_strategy": "group_by_length", "bf16": adapted.precision == "bf16"} if best else {}
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=cfg.train.batch_size,
                                 num_train_epochs=1, learning_rate=learning_rate, weight_decay=cfg.train.weight_decay,
                                 warmup_steps=int(cfg.train.warmup_ratio * steps), max_grad_norm=cfg.train.max_grad_norm,
                                 use_cpu=not torch.cuda.is_available(), save_strategy="no", eval_strategy="no",
                                 report_to=[], logging_steps=50, disable_tqdm=True, seed=cfg.train.seed,
                                 dataloader_num_workers=0, **flags)
        trainer = Trainer(model=adapted.model, args=args, train_dataset=rows, data_collator=collator)
        _synchronize()
        start = time.perf_counter()
        trainer.train()
        _synchronize()
        return time.perf_counter() - start


def useful_flops(model, lengths: list[int]) -> float:
    """Training FLOPs of one epoch over inputs of these (non-padding) lengths: see the module's docstring."""
    from torch import nn

    from tunelab.training.first_token import first_position_layer
    once = _first_position_modules(model, first_position_layer(model))
    linear = trained = linear_once = trained_once = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            n, t = module.weight.numel(), module.weight.numel() if module.weight.requires_grad else 0
            if id(module) in once:
                linear_once, trained_once = linear_once + n, trained_once + t
            else:
                linear, trained = linear + n, trained + t
    config = getattr(model, "config", None) or model.get_base_model().config
    layers, hidden = config.num_hidden_layers, config.hidden_size
    tokens = sum(lengths)
    attending = (layers - 1) if once else layers  # the last layer's one query attends in 4 × hidden × length
    attention = sum(4 * hidden * n * (attending * n + layers - attending) for n in lengths)
    forward = 2 * linear * tokens + 2 * linear_once * len(lengths) + attention
    return 2 * forward + 2 * trained * tokens + 2 * trained_once * len(lengths)


def _first_position_modules(model, last_layer) -> set[int]:
    """ids of the modules whose result only the first position needs, in a classifier whose head reads that
    position alone (`tunelab.training.first_token`): the last layer, less its keys and values, and the head."""
    if last_layer is None:
        return set()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    encoder = base.base_model
    every = {id(m) for part in (encoder.embeddings, encoder.encoder) for m in part.modules()}
    kept = {id(m) for name in ("key", "value") for m in getattr(last_layer.attention.self, name).modules()}
    return ({id(m) for m in last_layer.modules()} - kept) | ({id(m) for m in model.modules()} - every)


def gemm_peak(dtype_name: str) -> float:
    """FLOP/s of the best of five square matrix products in `dtype_name` on the training device: 2,048² on a CPU
    (with this process's threads), 8,192² on a GPU (smaller ones leave a large GPU partly idle)."""
    import torch

    from tunelab.training.precision import device
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    dev = device()
    n = 8192 if dev.type == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=dev), torch.randn(n, n, dtype=dtype, device=dev)
    _timed(lambda: a @ b)  # warm-up: oneDNN or cuBLAS picks its kernel on the first call
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * n ** 3 / best


def _synchronize() -> None:
    """Wait for the GPU's queued work: its kernels run after the Python call that launched them returns."""
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _synchronize()
    start = time.perf_counter()
    fn()
    _synchronize()
    return time.perf_counter() - start


# --- the parent: alternate the recipes, keep the best repeat, print the table ---------------------------------

def child(recipe: str, case: str, examples: int, precision: str, overrides: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", json.dumps([recipe, case, examples, precision, overrides])]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{recipe} on {case} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each recipe, with seeds 0, 1, …")
    parser.add_argument("--examples", type=int, default=3000, help="MiniLM cases: examples before the split")
    parser.add_argument("--smollm2-examples", type=int, default=200, help="SmolLM2 cases: examples before the split")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--json", default="bench/results/speed.json")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every case, e.g. model=path/to/tiny (the unit test's tiny model)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_one(*json.loads(args.child))), flush=True)
        return 0
    import torch

    from tunelab.training.precision import device, resolve
    precision = resolve(args.precision, device())
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    peak = {"fp32": gemm_peak("fp32")}
    if precision == "bf16":
        peak["bf16"] = gemm_peak("bf16")
    print(f"{torch.get_num_threads()} threads, precision {precision}; GEMM peak (2048², best of 5): "
          + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peak.items()))
    results = []
    for case in cases:
        examples = args.smollm2_examples if CASES[case][0].startswith("smollm2") else args.examples
        runs = {r: [] for r in RECIPES}
        for repeat in range(args.repeats):
            order = RECIPES if repeat % 2 == 0 else RECIPES[::-1]  # alternate which recipe goes first
            for recipe in order:
                # Repeat k trains with seed k (initialisation, dropout, order), the same seed for every recipe:
                # the test metric's mean over repeats then holds the training's own noise, not one draw of it.
                runs[recipe].append(child(recipe, case, examples, precision, [*args.override, f"train.seed={repeat}"]))
                r = runs[recipe][-1]
                print(f"  {case:19} {recipe:8} repeat {repeat + 1}: {r['examples_per_s']:7.2f} examples/s, "
                      f"{r['test_metric']:.4f} {r['metric']}", flush=True)
        # Copies: the best runs get the means over repeats below, while the per-seed differences read every run.
        best = {r: dict(max(runs[r], key=lambda x: x["examples_per_s"])) for r in RECIPES}
        for recipe, r in best.items():
            r["flops_per_s"] = r["flops"] / r["seconds"]
            r["fraction_of_gemm_peak"] = r["flops_per_s"] / peak[r["precision"]]
            r["vs_hf"] = r["examples_per_s"] / best["hf"]["examples_per_s"]
            r["vs_hf_best"] = r["examples_per_s"] / best["hf-best"]["examples_per_s"]
            r["repeats"] = [x["examples_per_s"] for x in runs[recipe]]
            r["spread"] = (statistics.pstdev(r["repeats"]) / statistics.mean(r["repeats"])
                           if len(r["repeats"]) > 1 else None)
            r["test_metrics"] = [x["test_metric"] for x in runs[recipe]]
            r["test_metric"] = statistics.mean(r["test_metrics"])
            r["test_metric_sd"] = statistics.stdev(r["test_metrics"]) if len(r["test_metrics"]) > 1 else None
            r["vs_hf_best_accuracy"] = (seed_difference(runs[recipe], runs["hf-best"]) if args.repeats > 1
                                        else paired_difference(r["correct"], best["hf-best"]["correct"]))
            results.append(r)
        for r in best.values():  # per-example results: used above, too long for the JSON
            r.pop("correct", None)
    for dtype in peak:  # measured again at the end, keeping the higher: a peak is what the machine can do at best
        peak[dtype] = max(peak[dtype], gemm_peak(dtype))
    for r in results:
        r["fraction_of_gemm_peak"] = r["flops_per_s"] / peak[r["precision"]]
    print("GEMM peak, the higher of the measures at the start and the end: "
          + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peak.items()))
    print_table(results)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M:%S"), "gemm_peak_flops": peak,
                               "precision": precision, "repeats": args.repeats, "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


T_95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833}


def seed_difference(runs: list[dict], others: list[dict]) -> list[float] | None:
    """Accuracy difference over repeats (seed k against seed k), with a 90% interval from the spread of the
    per-seed differences (Student's t): training noise included, which a single run's interval leaves out."""
    if runs[0]["metric"] != "accuracy":
        return None
    d = [a["test_metric"] - b["test_metric"] for a, b in zip(runs, others)]
    mean = statistics.mean(d)
    half = T_95.get(len(d) - 1, 1.645) * statistics.stdev(d) / len(d) ** 0.5
    return [mean, mean - half, mean + half]


def paired_difference(correct: list[int] | None, other: list[int] | None) -> list[float] | None:
    """Accuracy difference on the same test examples with its 90% interval, [difference, low, high]: the
    per-example differences' mean ± 1.645 standard errors. Paired, so far narrower than either accuracy's own."""
    if not correct or not other:
        return None
    d = [a - b for a, b in zip(correct, other)]
    mean = sum(d) / len(d)
    se = (sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5 if len(d) > 1 else 0.0
    return [mean, mean - 1.645 * se, mean + 1.645 * se]


def print_table(results: list[dict]) -> None:
    print(f"\n| case | recipe | examples/s | tokens/s | × HF default | × HF best | peak MiB | test | "
          f"test − HF best's | useful GFLOP/s | of GEMM peak |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        spread = f" ±{100 * r['spread']:.0f}%" if r["spread"] is not None else ""
        sure = (f" ±{r['test_metric_sd']:.3f} sd" if r["test_metric_sd"] is not None
                else f" ±{r['test_metric_90']:.3f}" if r["test_metric_90"] is not None else "")
        d = r["vs_hf_best_accuracy"]
        delta = f"{100 * d[0]:+.1f} pt [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]" if d else "–"
        print(f"| {r['case']} | {r['recipe']} | {r['examples_per_s']:.1f}{spread} | {r['tokens_per_s']:.0f} | "
              f"{r['vs_hf']:.2f} | {r['vs_hf_best']:.2f} | {_peak(r)} | "
              f"{r['metric']} {r['test_metric']:.3f}{sure} | {delta} | {r['flops_per_s'] / 1e9:.1f} | "
              f"{100 * r['fraction_of_gemm_peak']:.0f}% |")
    print("(peak MiB: the process's resident memory on a CPU; on a GPU the GPU allocator's peak, then the resident "
          "memory after the slash)")
    print("(examples/s: the best repeat, ± their spread over repeats (standard deviation / mean); test: the mean "
          "over repeats (seeds 0, 1, …) ± standard deviation, or one run's 90% interval; [ ]: 90% interval of the "
          "difference, seed against seed (or example against example for one repeat))")


def _peak(r: dict) -> str:
    device = r.get("device_peak_mib")
    return f"{r['peak_rss_mib']:.0f}" if device is None else f"{device:.0f} / {r['peak_rss_mib']:.0f}"


if __name__ == "__main__":
    sys.exit(main())
