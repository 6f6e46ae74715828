"""Gradient accumulation: 4 micro-batches of 4 make the update of one batch of 16 — for classification (a mean
over examples) and for generation (a mean over answer tokens, which micro-batches hold in unequal numbers)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import torch
from safetensors.torch import load_file

from tunelab.api import train


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted((run / "model").glob("*.safetensors")) for k, v in load_file(f).items()}


def _trained(cfg: dict, name: str, batch_size: int, accumulate: int) -> tuple[dict, list]:
    cfg = {**cfg, "name": name, "train": {**cfg["train"], "batch_size": batch_size, "dropout": 0.0,
                                          "gradient_accumulation_steps": accumulate}}
    train(cfg, log=lambda _: None)
    run = Path(cfg["output"]) / name
    losses = [(h["step"], h["train_loss"]) for line in (run / "history.jsonl").read_text().splitlines()
              if "train_loss" in (h := json.loads(line))]
    return _weights(run), losses


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _check(cfg: dict) -> None:
    whole, whole_losses = _trained(cfg, "whole", 16, 1)
    accumulated, accumulated_losses = _trained(cfg, "accumulated", 4, 4)
    small, _ = _trained(cfg, "small", 4, 1)
    same = _max_difference(whole, accumulated)
    assert same < 1e-5, same
    assert _max_difference(whole, small) > 100 * max(same, 1e-7)  # the tolerance tells the two apart
    assert [s for s, _ in whole_losses] == [s for s, _ in accumulated_losses]  # the same steps
    assert [v for _, v in accumulated_losses] == pytest.approx([v for _, v in whole_losses], abs=1e-5)


def test_four_micro_batches_of_four_update_as_one_batch_of_sixteen_classification(tiny_config):
    _check(tiny_config("full", train__epochs=1))


def test_four_micro_batches_of_four_update_as_one_batch_of_sixteen_generation(tiny_generation_config):
    _check(tiny_generation_config("full"))
