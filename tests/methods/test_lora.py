from __future__ import annotations

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from tunelab.api import train
from tunelab.settings import load_config


def test_lora_adapter_folder_loads_with_peft_and_keeps_the_head(tiny_config):
    cfg = tiny_config("lora")
    metrics = train(cfg, log=lambda _: None)
    folder = metrics["run_folder"]
    base = AutoModelForSequenceClassification.from_pretrained(cfg["model"], num_labels=2)
    model = PeftModel.from_pretrained(base, f"{folder}/model").eval()
    # The trained head comes back from the adapter folder, not the random one of `base`.
    saved_head = [n for n, _ in model.named_parameters() if "modules_to_save" in n and "classifier" in n]
    assert saved_head
    ids = torch.tensor([[101, 2204, 102]])
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_dora_and_target_modules_options(tiny_config):
    cfg = load_config(tiny_config("lora"), ["method.use_dora=true", "method.target_modules=[query,key,value]",
                                            "method.r=4"])
    metrics = train(cfg, log=lambda _: None)
    adapter_config = (__import__("pathlib").Path(metrics["run_folder"]) / "model" / "adapter_config.json").read_text()
    assert '"use_dora": true' in adapter_config
    assert all(m in adapter_config for m in ('"query"', '"key"', '"value"'))
