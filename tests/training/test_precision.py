"""`train.precision: auto` on CPU: bf16 only where this machine runs it faster than fp32."""
from __future__ import annotations

import pytest
import torch

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
