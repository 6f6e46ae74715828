from __future__ import annotations

import pytest
from transformers import AutoModelForSequenceClassification

from tunelab.errors import ConfigError
from tunelab.methods.full import FullFineTuning, FullOptions


def test_freeze_layers_freezes_embeddings_and_lowest_layers(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    FullFineTuning(FullOptions(freeze_layers=1)).prepare(model, ["classifier"])
    for name, p in model.named_parameters():
        frozen = "embeddings" in name or ".layer.0." in name
        assert p.requires_grad != frozen, name


def test_freeze_more_layers_than_the_model_has(tiny_llama):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=2)
    with pytest.raises(ConfigError, match="freeze_layers` is 5 but the model has 2 layers"):
        FullFineTuning(FullOptions(freeze_layers=5)).prepare(model, ["score"])


def test_saved_full_model_loads_with_transformers_alone(tiny_config, tmp_path):
    from tunelab.api import train
    metrics = train(tiny_config("full"), log=lambda _: None)
    model = AutoModelForSequenceClassification.from_pretrained(f"{metrics['run_folder']}/model")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert list((tmp_path / "runs").glob("*/model/*.bin")) == []  # safetensors only
