"""`training/dropout.py`: the CPU dropout that draws four masks per 64-bit random number (30% of a LoRA step was
PyTorch's per-element `bernoulli_`). It must be dropout: the rate, the scale, the gradient, the seed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tunelab.training.dropout import (ATTENTION, CpuDropout, _scaled_mask, attention_with_cpu_dropout,
                                      use_cpu_attention, use_cpu_dropout)


def test_each_element_is_kept_at_the_rate_and_scaled_by_its_inverse():
    torch.manual_seed(0)
    out = CpuDropout(0.1).train()(torch.ones(400_000))
    kept = out != 0
    assert out.unique().tolist() == [0.0, pytest.approx(1 / 0.9)]
    # 400,000 draws: the standard error of the rate is 0.0005; each of the four 16-bit pieces of a draw on its own
    # (100,000 each, 0.001) too, so that no piece (the top one holds the draw's sign bit) is biased.
    assert kept.float().mean().item() == pytest.approx(0.9, abs=0.002)
    for piece in kept.view(-1, 4).float().mean(0).tolist():
        assert piece == pytest.approx(0.9, abs=0.004)
    assert out.mean().item() == pytest.approx(1.0, abs=0.003)  # unbiased in expectation


def test_a_rate_too_small_for_16_bits_keeps_everything():
    x = torch.randn(1000)
    assert torch.allclose(CpuDropout(1e-9).train()(x), x)


def test_masks_are_not_repeated_within_a_tensor_or_between_calls():
    torch.manual_seed(0)
    drop = CpuDropout(0.5).train()
    a, b = drop(torch.ones(64, 64)) != 0, drop(torch.ones(64, 64)) != 0
    assert not torch.equal(a, b)
    assert not torch.equal(a[:32], a[32:])
    # Neighbours are independent: as often equal as two fair coins.
    assert (a.view(-1)[1:] == a.view(-1)[:-1]).float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_the_same_seed_gives_the_same_masks_and_the_gradient_is_the_mask():
    x = torch.randn(3, 7, 5, dtype=torch.bfloat16, requires_grad=True)
    drop = CpuDropout(0.2).train()
    torch.manual_seed(3)
    y = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)
    (grad,) = torch.autograd.grad(y.float().sum(), x)
    expected = (y != 0).to(x.dtype) * torch.tensor(1 / 0.8, dtype=x.dtype)
    assert torch.equal(grad, expected) and y.dtype == torch.bfloat16


def test_evaluation_a_rate_of_zero_and_in_place_dropout_are_pytorch_s_own():
    x = torch.randn(4, 4)
    assert torch.equal(CpuDropout(0.3).eval()(x), x)
    assert torch.equal(CpuDropout(0.0).train()(x), x)
    torch.manual_seed(1)
    ours = CpuDropout(0.3, inplace=True).train()(x.clone())
    torch.manual_seed(1)
    assert torch.equal(ours, nn.functional.dropout(x.clone(), 0.3, True, True))


def test_a_model_s_dropouts_change_class_in_place_and_keep_their_rates():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1), nn.Sequential(nn.Dropout(0.3)), nn.AlphaDropout(0.2))
    first = model[1]
    assert use_cpu_dropout(model) == 2
    assert model[1] is first and isinstance(first, CpuDropout) and isinstance(first, nn.Dropout)
    assert [m.p for m in model.modules() if isinstance(m, CpuDropout)] == [0.1, 0.3]
    assert type(model[3]) is nn.AlphaDropout  # another kind of dropout is left alone


def test_training_on_a_cpu_uses_it(tiny_config):
    from tunelab.pipeline import data_for, prepare
    from tunelab.settings import load_config
    from tunelab.tasks import task_for
    from tunelab.training.state import Training
    cfg = load_config(tiny_config("full"))
    adapted = prepare(cfg, data_for(cfg, task_for(cfg)), log=lambda _: None)
    Training.start(adapted.model, cfg.train, 1e-3, 4, "fp32", torch.device("cpu"))
    dropouts = [m for m in adapted.model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(type(m) is CpuDropout for m in dropouts)
    assert adapted.model.config._attn_implementation == ATTENTION


def _tiny_bert(attention_dropout: float = 0.1):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, attention_probs_dropout_prob=attention_dropout,
                        attn_implementation="sdpa")
    ids = torch.randint(0, 100, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, 5:] = 0  # a padded row: SDPA is given a mask
    return BertForSequenceClassification(config), {"input_ids": ids, "attention_mask": mask}


def test_attention_draws_the_cheap_masks_while_training_and_is_sdpa_otherwise():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    module = nn.Module()
    module.is_causal = False
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))
    mask = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    mask[0, :, :, 5:] = False
    sdpa, _ = sdpa_attention_forward(module, q, k, v, mask)
    assert torch.equal(attention_with_cpu_dropout(module, q, k, v, mask, dropout=0.0)[0], sdpa)
    assert torch.allclose(attention_with_cpu_dropout(module, q, k, v, mask, dropout=1e-9)[0], sdpa, atol=1e-6)
    torch.manual_seed(4)
    dropped, _ = attention_with_cpu_dropout(module, q, k, v, mask, dropout=0.3)
    weights = torch.softmax((q @ k.transpose(-2, -1) / 8 ** 0.5).masked_fill(~mask, -1e30), dim=-1)
    torch.manual_seed(4)
    expected = (weights * _scaled_mask(weights, 0.7)) @ v
    assert torch.allclose(dropped, expected.transpose(1, 2), atol=1e-6)
    assert not torch.allclose(dropped, sdpa, atol=1e-2)


def test_a_model_attends_with_it_gives_sdpa_s_outputs_in_evaluation_and_saves_no_trace(tmp_path):
    model, batch = _tiny_bert()
    model.eval()
    before = model(**batch).logits
    assert use_cpu_attention(model) and model.config._attn_implementation == ATTENTION
    assert torch.allclose(model(**batch).logits, before, atol=1e-6)
    model.train()
    torch.manual_seed(1)
    first = model(**batch).logits
    torch.manual_seed(1)
    assert torch.equal(model(**batch).logits, first)  # seeded: the same masks again
    model.save_pretrained(tmp_path)
    assert ATTENTION not in (tmp_path / "config.json").read_text()  # a saved model loads with SDPA anywhere


def test_a_model_without_sdpa_is_left_alone():
    from transformers import BertConfig, BertForSequenceClassification
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=4, intermediate_size=64,
                                                     attn_implementation="eager"))
    assert not use_cpu_attention(model) and model.config._attn_implementation == "eager"
    assert not use_cpu_attention(nn.Linear(2, 2))
