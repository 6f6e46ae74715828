"""Training speed of tunelab's loop against the Hugging Face `Trainer`, in the same run.

Same model (the embedded MiniLM with LoRA through peft), same examples, same batch size and
precision, per-batch padding in both (Trainer with DataCollatorWithPadding). Prints examples per
second for each and the ratio tunelab / Trainer. Run with `make bench`.

    python bench/train_speed.py [--examples 640] [--precision bf16|fp32] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from tunelab.settings import load_config  # noqa: E402
from tunelab.data import load_splits  # noqa: E402
from tunelab.pipeline import prepare  # noqa: E402
from tunelab.training.batches import Batches  # noqa: E402
from tunelab.training.loop import train  # noqa: E402
from tunelab.training.precision import device  # noqa: E402
from tunelab.training.state import Training  # noqa: E402


def _config(examples: int, precision: str):
    return load_config({"model": "minilm", "data": {"source": "rotten_tomatoes", "max_examples": examples,
                                                     "max_length": 64, "split": {"validation": 0.1, "test": 0.1}},
                        "method": {"name": "lora"},
                        "train": {"epochs": 1, "batch_size": 16, "precision": precision,
                                  "early_stopping": {"patience": 0}}})


def run_tunelab(cfg, splits) -> float:
    adapted = prepare(cfg, splits, log=lambda _: None)
    batches = Batches(adapted.task, adapted.tokenizer, splits.train, splits.labels, cfg.data.max_length)
    start = time.perf_counter()
    training = Training.start(adapted.model, cfg.train, 5e-4, batches.n_batches(cfg.train.batch_size),
                              adapted.precision, device())
    train(training, batches, lambda: {"f1": 0.0, "loss": 0.0}, "f1", adapted.task.better, log=lambda _: None)
    return len(splits.train) / (time.perf_counter() - start)


def run_trainer(cfg, splits) -> float:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    adapted = prepare(cfg, splits, log=lambda _: None)
    batches = Batches(adapted.task, adapted.tokenizer, splits.train, splits.labels, cfg.data.max_length)
    rows = [{**f, "labels": int(batches.targets[i])} for i, f in enumerate(batches.features)]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=cfg.train.batch_size,
                                 num_train_epochs=1, learning_rate=5e-4, weight_decay=cfg.train.weight_decay,
                                 warmup_steps=int(cfg.train.warmup_ratio * len(rows) / cfg.train.batch_size),
                                 bf16=adapted.precision == "bf16",
                                 use_cpu=not torch.cuda.is_available(), save_strategy="no", eval_strategy="no",
                                 report_to=[], logging_steps=10, disable_tqdm=True, seed=cfg.train.seed,
                                 dataloader_num_workers=0)
        trainer = Trainer(model=adapted.model, args=args, train_dataset=rows,
                          data_collator=DataCollatorWithPadding(adapted.tokenizer))
        start = time.perf_counter()
        trainer.train()
        return len(splits.train) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=640)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cfg = _config(args.examples, args.precision)
    splits = load_splits(cfg.data, "class")
    print(f"LoRA on MiniLM, {len(splits.train)} examples, batch {cfg.train.batch_size}, {args.precision}, "
          f"{torch.get_num_threads()} threads; best of {args.repeats} (alternating)")
    ours, theirs = [], []
    for _ in range(args.repeats):  # alternate so that drift in machine load hits both alike
        ours.append(run_tunelab(cfg, splits))
        theirs.append(run_trainer(cfg, splits))
    print(f"tunelab loop : {max(ours):7.1f} examples/s")
    print(f"HF Trainer   : {max(theirs):7.1f} examples/s")
    print(f"ratio tunelab/Trainer: {max(ours) / max(theirs):.2f}")


if __name__ == "__main__":
    main()
