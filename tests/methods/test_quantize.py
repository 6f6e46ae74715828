"""`method.quantize: 4bit` (QLoRA): refused in one line, before any model loads, where it cannot run (a CPU, or a
GPU without bitsandbytes); on a GPU with bitsandbytes, the QLoRA paper's 4-bit config. The 4-bit training itself
needs a CUDA GPU, which these tests do not have."""
from __future__ import annotations

import sys
import types

import pytest
import torch
import yaml

from tunelab.cli import main
from tunelab.methods.lora import quantization_config


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: the refusal must come first."""
    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")
    monkeypatch.setattr("tunelab.models.load_model", load)


def _train(tiny_config, tmp_path, capsys, *overrides: str) -> tuple[int, str]:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config("lora")))
    capsys.readouterr()
    status = main(["train", str(path), *overrides])
    return status, capsys.readouterr().err


def test_4bit_on_a_cpu_is_refused_in_one_line_before_any_model_loads(tiny_config, tmp_path, capsys, monkeypatch,
                                                                      no_model_load):
    monkeypatch.setattr("tunelab.methods.lora.device", lambda: torch.device("cpu"))
    status, err = _train(tiny_config, tmp_path, capsys, "method.quantize=4bit")
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: `method.quantize: 4bit` (QLoRA) needs a CUDA GPU")
    assert "remove method.quantize" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_4bit_on_a_gpu_without_bitsandbytes_is_refused_in_one_line(tiny_config, tmp_path, capsys, monkeypatch,
                                                                    no_model_load):
    monkeypatch.setattr("tunelab.methods.lora.device", lambda: torch.device("cuda"))  # as on a GPU machine
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    status, err = _train(tiny_config, tmp_path, capsys, "method.quantize=4bit")
    assert status == 2
    assert err.count("\n") == 1 and "needs the bitsandbytes package" in err and "pip install bitsandbytes" in err


def test_another_value_lists_the_valid_one(tiny_config, tmp_path, capsys, no_model_load):
    status, err = _train(tiny_config, tmp_path, capsys, "method.quantize=3bit")
    assert status == 2
    assert "method.quantize" in err and "4bit" in err and "3bit" in err


def test_on_a_gpu_with_bitsandbytes_the_config_is_qloras(monkeypatch):
    monkeypatch.setattr("tunelab.methods.lora.device", lambda: torch.device("cuda"))  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    config = quantization_config("4bit")
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config(None) is None


def test_a_4bit_parameter_counts_the_two_weights_in_each_byte():
    """bitsandbytes packs two 4-bit weights per byte: QLoRA's weight count must not halve the frozen base."""
    from tunelab.methods.base import count_parameters

    class Params4bit(torch.nn.Parameter):  # bitsandbytes' class, by name (it is not installed here)
        pass

    model = torch.nn.Linear(8, 4, bias=False)
    model.weight = Params4bit(torch.zeros(16, 1, dtype=torch.uint8), requires_grad=False)  # 32 weights, packed
    model.extra = torch.nn.Parameter(torch.zeros(3))
    assert count_parameters(model) == {"trainable": 3, "total": 35}
