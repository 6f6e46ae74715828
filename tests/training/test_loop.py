"""The training loop: early stopping with best-weight restore, the non-finite-loss guard, determinism."""
from __future__ import annotations

import pytest
import torch

from tunelab.settings import load_config
from tunelab.data import load_splits
from tunelab.errors import TrainingError
from tunelab.pipeline import fit, prepare
from tunelab.tasks import TASKS


def _fit(cfg_dict, overrides=()):
    cfg = load_config(cfg_dict, list(overrides))
    splits = load_splits(cfg.data, TASKS.get("classification"))
    logs: list[str] = []
    adapted = fit(cfg, splits, log=logs.append)
    return adapted, logs


def test_early_stopping_fires_and_restores_the_best_weights(tiny_config):
    # A learning rate of 0 after warm-up never improves: stop after `patience` evaluations.
    adapted, logs = _fit(tiny_config("full"), ["train.epochs=6", "train.early_stopping.patience=2",
                                               "train.learning_rate=1e-9", "train.early_stopping.metric=loss"])
    state = adapted.state
    assert state.stopped_early
    assert state.epoch < 6
    assert state.epoch - state.best_epoch == 2
    assert any("early stopping" in line for line in logs)
    evals = [h for h in state.history if "validation_loss" in h]
    assert len(evals) == state.epoch
    best = min(h["validation_loss"] for h in evals)
    assert state.best_value == pytest.approx(best)
    # The weights in the model are the best epoch's: re-evaluating gives the best validation loss.
    splits = load_splits(adapted.cfg.data, TASKS.get("classification"))
    assert adapted.evaluate(splits.validation)["loss"] == pytest.approx(best, rel=1e-5)


def test_non_finite_loss_stops_with_a_clear_error(tiny_config):
    cfg = load_config(tiny_config("full"))
    splits = load_splits(cfg.data, TASKS.get("classification"))
    adapted = prepare(cfg, splits, log=lambda _: None)
    with torch.no_grad():
        adapted.model.classifier.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"training loss became nan at step 1; lower train.learning_rate"):
        fit(cfg, splits, log=lambda _: None, adapted=adapted)


def test_same_seed_same_weights_different_seed_different_weights(tiny_config):
    a, _ = _fit(tiny_config("lora"), ["train.epochs=1"])
    b, _ = _fit(tiny_config("lora"), ["train.epochs=1"])
    c, _ = _fit(tiny_config("lora"), ["train.epochs=1", "train.seed=1"])
    pa, pb, pc = (dict(x.model.named_parameters()) for x in (a, b, c))
    name = next(n for n in pa if "lora_B" in n)
    assert torch.equal(pa[name], pb[name])
    assert not torch.equal(pa[name], pc[name])


def test_reports_within_the_first_epoch_do_not_change_what_is_trained(tiny_config):
    """A search hears evaluations at thirds of the first epoch to prune early; the run must train exactly as
    without them (an evaluation draws no random numbers and leaves the model in training mode)."""
    cfg = load_config(tiny_config("lora"), ["train.epochs=2", "train.batch_size=4"])
    splits = load_splits(cfg.data, TASKS.get("classification"))
    heard: list[tuple[float, float]] = []
    plain = fit(cfg, splits, log=lambda _: None)
    reported = fit(cfg, splits, log=lambda _: None, on_evaluation=lambda e, v: heard.append((e, v)),
                   first_epoch_reports=3)
    assert [e for e, _ in heard] == pytest.approx([1 / 3, 2 / 3, 1.0, 2.0])
    a, b = dict(plain.model.named_parameters()), dict(reported.model.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a)
    strip = [{k: v for k, v in h.items() if k != "time"} for h in plain.state.history]
    assert strip == [{k: v for k, v in h.items() if k != "time"} for h in reported.state.history]


def test_history_has_steps_and_epochs(tiny_config):
    adapted, _ = _fit(tiny_config("lora"), ["train.epochs=2", "train.log_every=1"])
    steps = [h for h in adapted.state.history if "train_loss" in h]
    assert [h["step"] for h in steps] == list(range(1, adapted.state.step + 1))
    assert all(h["learning_rate"] >= 0 for h in steps)
    assert [h["epoch"] for h in adapted.state.history if "validation_f1" in h] == [1, 2]


def test_a_run_shorter_than_log_every_still_records_its_training_loss(tiny_config):
    adapted, _ = _fit(tiny_config("lora"), ["train.epochs=2", "train.log_every=1000"])
    steps = [h for h in adapted.state.history if "train_loss" in h]
    assert [h["epoch"] for h in steps] == [1, 2] and steps[-1]["step"] == adapted.state.step
    assert all(h["train_loss"] > 0 for h in steps)


def test_dropout_override_reaches_the_model(tiny_config):
    adapted, _ = _fit(tiny_config("full"), ["train.dropout=0.3", "train.epochs=1"])
    assert adapted.model.config.hidden_dropout_prob == 0.3
    assert adapted.model.config.attention_probs_dropout_prob == 0.3


def test_group_by_length_batches_similar_lengths_and_keeps_every_example(llama_tokenizer):
    from tunelab.data import Example
    from tunelab.tasks.generation import GenerationTask
    from tunelab.training.batches import Batches
    # 40 prompts of 1 to 40 words, shuffled: random batches of 4 mix lengths, grouped ones do not.
    examples = [Example(" ".join(["word"] * n), "yes") for n in torch.randperm(40, generator=torch.Generator()
                                                                                .manual_seed(1)).add(1).tolist()]
    batches = Batches(GenerationTask(), llama_tokenizer, examples, [], max_length=128)

    def widths_and_rows(group):
        out = list(batches.iterate(4, torch.Generator().manual_seed(0), group_by_length=group))
        padded = sum(b["input_ids"].numel() for b in out)
        rows = sorted(tuple(r[m.bool()].tolist()) for b in out for r, m in zip(b["input_ids"], b["attention_mask"]))
        return padded, rows

    random_padded, random_rows = widths_and_rows(False)
    grouped_padded, grouped_rows = widths_and_rows(True)
    assert grouped_rows == random_rows  # the same examples, each once
    real = sum(len(r) for r in grouped_rows)
    assert grouped_padded - real <= 40 * 3  # each batch of 4 consecutive lengths pads at most 3 tokens a row
    assert random_padded - real > 3 * (grouped_padded - real)


def test_grouped_batches_come_in_random_order_within_their_group_and_a_short_last_batch_stays_last(
        llama_tokenizer):
    from tunelab.data import Example
    from tunelab.tasks.generation import GenerationTask
    from tunelab.training.batches import Batches
    # 210 prompts of 1 to 30 words: one group of 50 batches of 4 (200 inputs), then 10 inputs (2 batches and 2 left).
    lengths = torch.randperm(210, generator=torch.Generator().manual_seed(2)).remainder(30).add(1).tolist()
    batches = Batches(GenerationTask(), llama_tokenizer, [Example(" ".join(["word"] * n), "yes") for n in lengths],
                      [], max_length=128)
    order = batches._order(4, torch.Generator().manual_seed(0), True)
    assert sorted(order) == list(range(210))
    size = [len(batches.features[i]["input_ids"]) for i in order]
    longest = [max(size[j:j + 4]) for j in range(0, 200, 4)]
    # Each batch holds like lengths, but the group is not swept from its longest batch to its shortest (which would
    # end every group, and training, on its shortest inputs): the batches' order within the group is random.
    assert all(max(size[j:j + 4]) - min(size[j:j + 4]) <= 1 for j in range(0, 200, 4))
    assert longest != sorted(longest, reverse=True)
    assert abs(sum(longest[:25]) - sum(longest[25:])) < 0.25 * sum(longest) / 2
    # The last group: its 2 full batches in either order, and the short one (2 inputs) last, so that every batch
    # before it keeps its bounds.
    tail = sorted(size[200:], reverse=True)
    assert sorted(size[200:208], reverse=True) == tail[:8] and sorted(size[208:], reverse=True) == tail[8:]
    # The same seed, the same order (a resumed run replays it).
    assert batches._order(4, torch.Generator().manual_seed(0), True) == order


def test_speed_estimate_times_grouped_batches_from_across_the_epoch(llama_tokenizer):
    from tunelab.data import Example
    from tunelab.tasks.generation import GenerationTask
    from tunelab.training.batches import Batches, timing_batches
    examples = [Example(" ".join(["word"] * n), "yes") for n in range(1, 41)]
    batches = Batches(GenerationTask(), llama_tokenizer, examples, [], max_length=128)
    timed = timing_batches(batches, 4, torch.Generator().manual_seed(0), 6, group_by_length=True)[1:]
    rows = [int(m.sum()) for b in timed for m in b["attention_mask"]]
    widths = [b["input_ids"].shape[1] for b in timed for _ in b["input_ids"]]
    assert all(w - r <= 3 for w, r in zip(widths, rows))  # grouped batches, as training pads them
    every = [len(f["input_ids"]) for f in batches.features]
    # Spread over the epoch, not its first (longest) batches: their mean length is near the epoch's.
    assert abs(sum(rows) / len(rows) - sum(every) / len(every)) < 5


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_trains_the_same_weights(tiny_generation_config, method):
    # Recomputing activations in the backward pass changes memory, not the arithmetic (dropout included:
    # the recomputation replays the random state).
    def trained(checkpointing: bool):
        cfg = load_config(tiny_generation_config(method), [f"train.gradient_checkpointing={str(checkpointing).lower()}",
                                                           "train.epochs=1"])
        splits = load_splits(cfg.data, TASKS.get("generation"))
        adapted = fit(cfg, splits, log=lambda _: None)
        base = adapted.model.get_base_model() if hasattr(adapted.model, "get_base_model") else adapted.model
        assert base.is_activation_checkpointing == checkpointing
        return {n: p.detach().clone() for n, p in adapted.model.named_parameters() if p.requires_grad}

    plain, checkpointed = trained(False), trained(True)
    assert plain.keys() == checkpointed.keys()
    # Training moved the weights, so equality below is not that of two untouched models.
    if method == "lora":
        assert any(w.abs().sum() > 0 for n, w in plain.items() if "lora_B" in n)  # lora_B starts at zero
    else:
        from pathlib import Path

        from safetensors.torch import load_file
        saved = load_file(Path(tiny_generation_config(method)["model"]) / "model.safetensors")
        start = {f"model.{n}": w for n, w in saved.items()}  # saved from the bare LlamaModel: no "model." prefix
        shared = [n for n in plain if n in start]
        assert shared
        assert any(not torch.equal(plain[n], start[n].to(plain[n].dtype)) for n in shared)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_on_a_model_without_it_is_a_config_error():
    from tunelab.errors import ConfigError
    from tunelab.training.memory import enable_gradient_checkpointing
    with pytest.raises(ConfigError, match=r"my-model \(Linear\) does not support gradient checkpointing; set "
                                          r"train.gradient_checkpointing: false"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2), "my-model")


def test_predictions_come_back_in_example_order_though_batches_are_sorted_by_length(tiny_config):
    """Evaluation batches inputs of like length (longest first) and puts the outputs back in the examples' order:
    each example's scores equal those of scoring it alone, and the loss those of the examples one by one."""
    import dataclasses

    import numpy as np

    from tunelab.training.batches import Batches
    from tunelab.training.loop import predict_scores
    cfg = load_config(tiny_config("full"))
    splits = load_splits(cfg.data, TASKS.get("classification"))
    adapted = prepare(cfg, splits, log=lambda _: None)
    # Texts cut to 1, 2, 3, … words, in no order of length.
    examples = [dataclasses.replace(e, text=" ".join(e.text.split()[:1 + (7 * i) % 5]))
                for i, e in enumerate(splits.train[:24])]
    batches = Batches(adapted.task, adapted.tokenizer, examples, splits.labels, cfg.data.max_length)
    lengths = [len(f["input_ids"]) for f in batches.features]
    assert len(set(lengths)) > 3 and lengths != sorted(lengths, reverse=True)  # sorting changes the order
    scores, loss = predict_scores(adapted.model, batches, 8, "fp32", torch.device("cpu"))
    alone = [predict_scores(adapted.model, Batches(adapted.task, adapted.tokenizer, [e], splits.labels,
                                                   cfg.data.max_length), 1, "fp32", torch.device("cpu"))
             for e in examples]
    np.testing.assert_allclose(scores, np.concatenate([s for s, _ in alone]), rtol=1e-4, atol=1e-5)
    assert loss == pytest.approx(np.mean([l for _, l in alone]), rel=1e-4)


def test_the_optimizer_is_fused_adamw_on_cpu(tiny_config):
    """One pass over all weights per step, as the Trainer's default `adamw_torch_fused`."""
    from tunelab.training.state import Training
    cfg = load_config(tiny_config("full"))
    model = torch.nn.Linear(4, 2)
    training = Training.start(model, cfg.train, 1e-3, 10, "fp32", torch.device("cpu"))
    assert isinstance(training.optimizer, torch.optim.AdamW) and training.optimizer.defaults["fused"] is True


class _Poisoned(torch.nn.Module):
    """A model whose loss (or, with `grad`, whose gradients only) are NaN on the steps listed."""

    def __init__(self, bad_steps: set[int], grad: bool = False):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.bad_steps, self.grad, self.calls = bad_steps, grad, 0

    def forward(self, x):
        self.calls += 1
        loss = ((self.weight * x) ** 2).mean()
        if self.calls in self.bad_steps:
            if self.grad:  # a finite loss whose gradient is NaN: 0 · sqrt(u) at u = 0 is 0, its slope 0 · inf
                loss = loss + (torch.sqrt(self.weight - self.weight.detach()) * 0).sum()
            else:
                loss = loss * float("nan")
        return type("Out", (), {"loss": loss})()


def _training(model, **train):
    from tunelab.config import TrainConfig
    from tunelab.training.state import Training
    return Training.start(model, TrainConfig(**train), 0.1, 10, "fp32", torch.device("cpu"))


@pytest.mark.parametrize("grad", [False, True])
def test_on_nonfinite_skip_drops_the_update_counts_it_and_goes_on(grad):
    model = _Poisoned({2}, grad=grad)
    t = _training(model, on_nonfinite="skip", warmup_ratio=0.0)
    t.step({"x": torch.ones(2)})
    before = model.weight.detach().clone()
    t.step({"x": torch.ones(2)})  # poisoned: no update
    assert torch.equal(model.weight.detach(), before) and torch.isfinite(model.weight).all()
    assert t.state.skipped_steps == 1 and t.state.step == 2
    t.step({"x": torch.ones(2)})
    assert not torch.equal(model.weight.detach(), before) and t.state.skipped_in_a_row == 0


@pytest.mark.parametrize("grad", [False, True])
def test_on_nonfinite_stop_names_the_step_and_the_way_out(grad):
    t = _training(_Poisoned({1}, grad=grad))
    what = "gradients became nan" if grad else "training loss became nan"
    with pytest.raises(TrainingError, match=rf"{what}.* at step 1; .*train.on_nonfinite=skip"):
        t.step({"x": torch.ones(2)})


def test_too_many_skipped_steps_in_a_row_stop_the_run():
    t = _training(_Poisoned(set(range(1, 100))), on_nonfinite="skip", max_skipped_in_a_row=3)
    t.step({"x": torch.ones(2)})
    t.step({"x": torch.ones(2)})
    with pytest.raises(TrainingError, match=r"at step 3, the 3th step in a row skipped .*diverging"):
        t.step({"x": torch.ones(2)})


def test_a_nan_injected_into_a_real_run_is_skipped_and_counted(tiny_config, monkeypatch):
    """End to end: the third training step of a tiny BERT run gets a NaN loss; with on_nonfinite: skip the run
    finishes and its metrics.json counts the skipped step."""
    from tunelab.api import train
    original, calls = torch.nn.functional.cross_entropy, []

    def poisoned(*args, **kwargs):
        loss = original(*args, **kwargs)
        if torch.is_grad_enabled():  # a training step (evaluation runs without gradients)
            calls.append(1)
            if len(calls) == 3:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    metrics = train(load_config(tiny_config("full"), ["train.on_nonfinite=skip", "train.epochs=1"]),
                    log=lambda _: None)
    assert len(calls) > 3 and metrics["skipped_steps"] == 1
    with pytest.raises(TrainingError, match="training loss became nan at step 3"):
        calls.clear()
        train(load_config(tiny_config("full"), ["train.epochs=1", "name=stops"]), log=lambda _: None)
