"""`train.precision: auto` on CPU: bf16 only where this machine runs it faster than fp32."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tunelab.training import precision


@pytest.fixture
def cpu(monkeypatch):
    """A CPU whose bf16 instructions and linear-layer timings the test sets."""
    def make(flags: bool, fp32_seconds: float = 1.0, bf16_seconds: float = 1.0):
        precision.cpu_bf16_is_faster.cache_clear()
        monkeypatch.setattr(precision, "cpu_has_bf16_instructions", lambda: flags)
        monkeypatch.setattr(precision, "linear_seconds",
                            lambda dtype: bf16_seconds if dtype == torch.bfloat16 else fp32_seconds)
        return torch.device("cpu")
    yield make
    precision.cpu_bf16_is_faster.cache_clear()


def test_auto_takes_bf16_where_it_is_measured_faster(cpu):
    assert precision.resolve("auto", cpu(flags=True, fp32_seconds=3.0, bf16_seconds=1.0)) == "bf16"  # ~3x, as reported


def test_auto_keeps_fp32_where_bf16_instructions_run_slower(cpu):
    # Seen on a Xeon with AVX512-BF16 but no AMX: bf16 linear layers took twice as long as fp32.
    assert precision.resolve("auto", cpu(flags=True, fp32_seconds=1.0, bf16_seconds=2.0)) == "fp32"
    assert precision.resolve("auto", cpu(flags=True, fp32_seconds=1.1, bf16_seconds=1.0)) == "fp32"  # noise-level gain


def test_auto_keeps_fp32_without_bf16_instructions_and_times_nothing(cpu, monkeypatch):
    cpu(flags=False)
    monkeypatch.setattr(precision, "linear_seconds", lambda dtype: pytest.fail("timed a CPU without bf16"))
    assert precision.resolve("auto", torch.device("cpu")) == "fp32"


def test_an_explicit_precision_is_kept(cpu):
    assert precision.resolve("bf16", cpu(flags=False)) == "bf16"
    assert precision.resolve("fp32", cpu(flags=True, fp32_seconds=3.0, bf16_seconds=1.0)) == "fp32"


def test_timing_times_a_real_layer_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert 0 < precision.linear_seconds(torch.float32) < 5
    assert torch.equal(torch.rand(3), expected)


def test_a_batch_for_the_cpu_is_moved_as_it_is():
    """Pinned memory is for copies to a GPU only (pinning needs CUDA): on a CPU the batch is its own tensors."""
    from tunelab.training.precision import to_device
    batch = {"input_ids": torch.arange(6).view(2, 3)}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["input_ids"] is batch["input_ids"]


def test_on_a_gpu_attention_leaves_out_cudnn_s_kernel_which_plans_again_for_every_new_length(monkeypatch):
    """cuDNN's attention made GPU training 3.7x slower (bench/gpu_checks.sh on an H200): choosing the GPU turns it
    off, once; on a CPU nothing is touched."""
    calls = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", lambda enabled: calls.append(enabled))
    precision._attention_without_cudnn.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.device().type == "cpu" and calls == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.device().type == "cuda" and precision.device().type == "cuda"
    assert calls == [False]
    precision._attention_without_cudnn.cache_clear()


def _lora_like_model():
    """A frozen linear (a base layer), a trained one (a head), and an output layer tied to a frozen embedding."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 10, bias=False))
    model[3].weight = model[0].weight  # tied, as a decoder's output layer and its embedding are
    for p in model.parameters():
        p.requires_grad_(False)
    model[2].weight.requires_grad_(True)
    return model


def test_frozen_weights_are_cast_once_and_give_autocast_s_products_exactly():
    model = _lora_like_model()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(ids)
    weights = {n: p.clone() for n, p in model.named_parameters()}
    with precision.frozen_weights_cast(model, "bf16", torch.device("cpu")) as cast:
        assert cast == 2  # the frozen linear and the tied output layer; not the trained one
        assert type(model[1]) is precision.FrozenLinear and type(model[2]) is nn.Linear
        assert model[0].weight.dtype == torch.float32  # the embedding keeps its weights, tied or not
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(model(ids), expected)
        assert model(ids).dtype == torch.float32  # without autocast: the fp32 weights, as before
    assert all(type(m) in (nn.Embedding, nn.Linear) and not hasattr(m, "weight_bf16") for m in model)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert set(model.state_dict()) == {"0.weight", "1.weight", "1.bias", "2.weight", "2.bias", "3.weight"}


def test_frozen_weights_stay_as_they_are_in_fp32_and_after_an_error():
    model = _lora_like_model()
    with precision.frozen_weights_cast(model, "fp32", torch.device("cpu")) as cast:
        assert cast == 0 and type(model[1]) is nn.Linear
    with pytest.raises(RuntimeError):
        with precision.frozen_weights_cast(model, "bf16", torch.device("cpu")):
            raise RuntimeError("a step failed")
    assert type(model[1]) is nn.Linear and not hasattr(model[1], "weight_bf16")


def test_a_bf16_training_run_casts_the_frozen_weights_and_gives_them_back(tiny_config):
    from tunelab.pipeline import data_for, prepare
    from tunelab.settings import load_config
    from tunelab.tasks import task_for
    from tunelab.training.batches import Batches
    from tunelab.training.loop import train
    from tunelab.training.state import Training
    cfg = load_config(tiny_config("lora", train__precision="bf16", train__epochs=1))
    splits = data_for(cfg, task_for(cfg))
    adapted = prepare(cfg, splits, log=lambda _: None)
    batches = Batches(adapted.task, adapted.tokenizer, splits.train, splits.labels, cfg.data.max_length)
    frozen = {n: p.clone() for n, p in adapted.model.named_parameters() if not p.requires_grad}
    seen = []
    original = precision.FrozenLinear.forward

    def forward(self, x):
        seen.append(self)
        return original(self, x)

    precision.FrozenLinear.forward = forward
    try:
        training = Training.start(adapted.model, cfg.train, 1e-3, batches.n_batches(8), "bf16", torch.device("cpu"))
        train(training, batches, lambda: {"loss": 0.0}, "loss", adapted.task.better, log=lambda _: None)
    finally:
        precision.FrozenLinear.forward = original
    assert seen  # the frozen base layers ran from their bf16 copies
    assert not any(isinstance(m, precision.FrozenLinear) for m in adapted.model.modules())
    assert all(torch.equal(p, frozen[n]) for n, p in adapted.model.named_parameters() if not p.requires_grad)
