"""The last layer of a BERT-style classifier, computed for the first position only.

A BERT, RoBERTa or ELECTRA sequence classifier reads one vector of the encoder's output: the first position's
([CLS] / <s>; BERT's pooler and the others' heads take `hidden_states[:, 0]`). In every layer but the last, each
position's output feeds the next layer's keys and values, so all are needed; in the last layer only the first
position's is ever read. Its keys and values still come from every position, but its query, attention output,
feed-forward block and layer norms are needed for that one position: 10 of the layer's 12 d² products per
token. For MiniLM-L6 (six layers) that is 14% of the encoder's matrix products, in the forward and the backward
pass alike. The first position's result is the same computation on the same numbers (the matrix products see
fewer rows, so the last bits of a float may round differently); the dropout in that layer draws masks for one
position, so a given seed draws other masks, as another seed would.

The encoder's output then holds the first position only (batch × 1 × hidden). That is why it is done only for the
classifiers listed below, while tunelab trains or scores them: a saved model is the usual one, and a caller that
wants every position's states (`output_hidden_states`) gets the usual forward pass.
"""
from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

import torch
from torch import nn

# Classifiers whose head reads only position 0 of the last hidden state, over layers built as BERT's (attention
# .self.query/key/value, attention.output, intermediate, output). A model class added here needs that structure.
FIRST_POSITION_CLASSIFIERS = ("BertForSequenceClassification", "RobertaForSequenceClassification",
                              "XLMRobertaForSequenceClassification", "CamembertForSequenceClassification",
                              "ElectraForSequenceClassification")


def first_position_layer(model: nn.Module) -> nn.Module | None:
    """The last encoder layer of a listed classifier (inside a peft wrapper too), or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if (type(base).__name__ not in FIRST_POSITION_CLASSIFIERS or base.config.output_hidden_states
            or base.config.output_attentions):
        return None
    encoder = getattr(base.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not layers:
        return None
    layer = layers[-1]
    if getattr(layer, "add_cross_attention", False) or not all(
            hasattr(layer, name) for name in ("attention", "intermediate", "output")):
        return None
    return layer


@contextlib.contextmanager
def first_position_only(model: nn.Module) -> Iterator[bool]:
    """Within: the last layer of `model` computes the first position only, where `model` is one of
    `FIRST_POSITION_CLASSIFIERS`; yields whether it does. Nested uses leave it to the outermost."""
    layer = first_position_layer(model)
    if layer is None or "forward" in vars(layer):
        yield layer is not None
        return
    layer.forward = types.MethodType(_first_position_forward, layer)
    try:
        yield True
    finally:
        del layer.forward  # the class's own forward again


def _first_position_forward(layer: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                            encoder_hidden_states: torch.Tensor | None = None,
                            encoder_attention_mask: torch.Tensor | None = None, past_key_values=None,
                            **kwargs) -> torch.Tensor:
    """BERT's layer forward (`BertLayer`, `BertAttention`, `BertSelfAttention`) with the query and everything
    after the attention for position 0 alone; returns batch × 1 × hidden. Cross-attention or a key/value cache
    (prefix tuning) take the class's own forward."""
    if encoder_hidden_states is not None or past_key_values is not None:
        return type(layer).forward(layer, hidden_states, attention_mask, encoder_hidden_states,
                                   encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values,
                                   **kwargs)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    attention = layer.attention.self
    batch, length = hidden_states.shape[:2]
    size = attention.attention_head_size
    first = hidden_states[:, :1]
    query = attention.query(first).view(batch, 1, -1, size).transpose(1, 2)
    key = attention.key(hidden_states).view(batch, length, -1, size).transpose(1, 2)
    value = attention.value(hidden_states).view(batch, length, -1, size).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1]  # the first query's row of a per-query mask
    eager = sys.modules[type(attention).__module__].eager_attention_forward  # the model's own, as it would pick
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager)
    context, _ = interface(attention, query, key, value, attention_mask,
                           dropout=attention.dropout.p if attention.training else 0.0, scaling=attention.scaling,
                           **kwargs)
    attended = layer.attention.output(context.reshape(batch, 1, -1), first)
    return layer.output(layer.intermediate(attended), attended)
