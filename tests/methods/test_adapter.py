"""Bottleneck adapters: identity at initialisation, placement, and what is trained."""
from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification

from tunelab.methods.adapter import AdapterOptions, BottleneckAdapter, Bottleneck, adapter_sites
from tunelab.methods.base import head_modules


def _pair(folder):
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    torch.manual_seed(0)
    adapted = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    return base, adapted


def test_adapted_model_equals_base_model_at_init(tiny_bert, tiny_llama):
    ids = torch.tensor([[101, 2204, 3185, 2001, 2307, 102]])
    for folder in (tiny_bert, tiny_llama):
        base, adapted = _pair(folder)
        BottleneckAdapter(AdapterOptions()).prepare(adapted, head_modules(adapted, ["classifier", "score"], ("classifier", "score", "pooler"))).eval()
        torch.testing.assert_close(adapted(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-6, rtol=0)


def test_houlsby_adds_two_adapters_per_layer_and_pfeiffer_one(tiny_bert, tiny_llama):
    for folder, layers in ((tiny_bert, 2), (tiny_llama, 2)):
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
        assert len(adapter_sites(model, "houlsby")) == 2 * layers
        assert len(adapter_sites(model, "pfeiffer")) == layers
        assert all(("output.dense" in s and "attention" not in s) or "down_proj" in s
                   for s in adapter_sites(model, "pfeiffer"))


def test_only_adapters_and_head_are_trainable(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    heads = head_modules(model, ["classifier"], ("classifier", "score", "pooler"))
    assert heads == ["bert.pooler", "classifier"]
    BottleneckAdapter(AdapterOptions(reduction_factor=4, non_linearity="gelu")).prepare(model, heads)
    for name, p in model.named_parameters():
        expected = ".adapter." in name or name.startswith(("bert.pooler", "classifier"))
        assert p.requires_grad == expected, name
    bottleneck = next(m for m in model.modules() if isinstance(m, Bottleneck))
    assert bottleneck.down.out_features == 32 // 4
