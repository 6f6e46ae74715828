"""Hostile files: pickles whose loading would run code (here: create a marker file) planted where tunelab reads
weights, checkpoints and data. None is ever unpickled: the marker never appears, and each case ends in a clear
error (or, for a checkpoint, in the one before it)."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tunelab.api import train
from tunelab.cli import main


class _Payload:
    """Unpickling this calls open(marker, "w"): the file appears only if someone unpickled it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Payload(marker)))


def _config_file(tmp_path: Path, cfg: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_a_model_folder_whose_only_weights_are_a_pickle_is_refused(tiny_config, tiny_bert, tmp_path, capsys):
    marker = tmp_path / "pwned-model"
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    for weights in model.glob("*.safetensors"):
        weights.unlink()
    _plant(model / "pytorch_model.bin", marker)
    assert main(["train", _config_file(tmp_path, tiny_config("lora", model=model))]) == 2
    err = capsys.readouterr().err
    assert "has no .safetensors weights" in err and "allow_unsafe_weights: true" in err and "Traceback" not in err
    assert not marker.exists()


def test_pickles_in_a_checkpoint_are_never_loaded(tiny_config, tmp_path, monkeypatch):
    """Planted beside a checkpoint's files (as a Trainer checkpoint's optimizer.pt / rng_state.pth would be) and
    in place of its optimizer-state file: the resume reads only safetensors and JSON, names the damaged file, and
    goes on from the checkpoint before."""
    marker = tmp_path / "pwned-checkpoint"
    cfg = tiny_config("lora")
    cfg["train"].update(epochs=3, checkpoint_every=4)
    cfg["name"] = "planted"
    real, calls = torch.optim.AdamW.step, {"n": 0}

    def step_or_crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 14:
            raise KeyboardInterrupt  # stands for a kill
        return real(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", step_or_crash)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, log=lambda _: None)
    newest = Path(cfg["output"]) / ".planted.checkpoint"
    for name in ("optimizer.pt", "rng_state.pth", "scheduler.pt", "training_args.bin"):
        _plant(newest / name, marker)
    _plant(newest / "state.safetensors", marker)
    logs: list[str] = []
    metrics = train(cfg, resume=True, log=logs.append)
    assert any("is damaged (state.safetensors: " in line for line in logs), logs
    assert metrics["resumed_at_step"] == 9
    assert not marker.exists()


def test_a_saved_datasets_folder_with_a_pickle_for_its_data_is_refused(tiny_config, tmp_path, capsys):
    import datasets
    marker = tmp_path / "pwned-data"
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["good film", "bad film"] * 10, "label": ["pos", "neg"] * 10}) \
        .save_to_disk(str(folder))
    for arrow in folder.glob("*.arrow"):
        _plant(arrow, marker)
    _plant(folder / "cache.pkl", marker)
    cfg = tiny_config("lora")
    cfg["data"]["source"] = str(folder)
    capsys.readouterr()  # save_to_disk's progress bar
    assert main(["train", _config_file(tmp_path, cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{folder}: " in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
