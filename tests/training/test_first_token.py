"""The last layer of a BERT-style classifier computed for the first position only (`training/first_token.py`):
the same logits and the same gradients as the whole layer, and the usual model everywhere else."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification, BertConfig,
                          ElectraConfig, RobertaConfig)

from tunelab.training.first_token import first_position_only

SIZES = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)


def classifier(config_class, attention="sdpa") -> nn.Module:
    torch.manual_seed(0)
    config = config_class(**SIZES, pad_token_id=1 if config_class is RobertaConfig else 0)
    config._attn_implementation = attention
    return AutoModelForSequenceClassification.from_config(config).eval()


def padded_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding, so that the attention mask matters
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2, 1])}


def logits_and_gradients(model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("config_class", [BertConfig, RobertaConfig, ElectraConfig])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_first_position_gives_the_whole_layers_logits_and_gradients(config_class, attention):
    model, batch = classifier(config_class, attention), padded_batch()
    logits, grads = logits_and_gradients(model, batch)
    with first_position_only(model) as used:
        fast_logits, fast_grads = logits_and_gradients(model, batch)
        assert used and model.base_model(**{k: v for k, v in batch.items() if k != "labels"}
                                          ).last_hidden_state.shape[1] == 1  # it did take the short path
    torch.testing.assert_close(fast_logits, logits, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(fast_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert model.base_model(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state.shape[1] == 9


def test_it_holds_under_lora_and_adapters_and_in_bf16():
    from peft import LoraConfig, get_peft_model

    from tunelab.methods.adapter import AdapterOptions, insert_adapters
    batch = padded_batch()
    lora = get_peft_model(classifier(BertConfig), LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"],
                                                            init_lora_weights=False))
    adapted = classifier(BertConfig)
    insert_adapters(adapted, AdapterOptions())
    for model in (lora, adapted):
        logits, grads = logits_and_gradients(model, batch)
        with first_position_only(model) as used:
            assert used
            fast_logits, fast_grads = logits_and_gradients(model, batch)
        torch.testing.assert_close(fast_logits, logits, rtol=1e-5, atol=1e-6)
        for name in grads:
            torch.testing.assert_close(fast_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            whole = model(**batch).logits.float()
            with first_position_only(model):
                first = model(**batch).logits.float()
        torch.testing.assert_close(first, whole, rtol=0.05, atol=0.02)  # bf16: the same up to its rounding


def test_other_models_and_callers_that_read_every_position_keep_the_usual_forward():
    torch.manual_seed(0)
    qa = AutoModelForQuestionAnswering.from_config(BertConfig(**SIZES))  # reads every position: not listed
    with first_position_only(qa) as used:
        assert not used
    hidden = classifier(BertConfig)
    hidden.config.output_hidden_states = True
    with first_position_only(hidden) as used:
        assert not used
    model = classifier(BertConfig)
    with first_position_only(model) as outer:
        with first_position_only(model) as inner:
            assert outer and inner
        assert "forward" in vars(model.bert.encoder.layer[-1])  # the inner exit leaves it to the outer
    assert "forward" not in vars(model.bert.encoder.layer[-1])
    with pytest.raises(RuntimeError), first_position_only(model):
        raise RuntimeError("a failed step")
    assert "forward" not in vars(model.bert.encoder.layer[-1])  # restored on the way out of an error
