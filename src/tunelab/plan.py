"""What a comparison (and an estimate before it) runs: the methods that fit the task, and each method's config
from the shared one."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import RunConfig, _merge, parse_overrides, read_yaml
from .methods import METHODS


def base_dict(config, overrides) -> dict[str, Any]:
    """The shared config as a plain dict (a `RunConfig`, a dict or a YAML path), with the overrides merged."""
    if isinstance(config, RunConfig):
        data = config.to_dict()
    elif isinstance(config, dict):
        data = dict(config)
    else:
        data = read_yaml(config)
    if overrides:
        data = _merge(data, parse_overrides(overrides))
    return data


def default_methods(cfg: RunConfig) -> list[str]:
    """Every registered method that fits the task (prompt scores with encoders and decoders alike)."""
    return [name for name, method in METHODS.items() if method.supports(cfg.task)]


def method_config(base: dict[str, Any], name: str, folder: Path) -> dict[str, Any]:
    """The config of one method in the comparison: the shared config, the method's own options.

    A method's block under `methods:` may hold a `train:` block whose keys replace the shared `train:` ones for
    that method alone: a learning rate right for LoRA (1e-3) would wreck full fine-tuning (5e-5)."""
    cfg = {k: v for k, v in base.items() if k not in ("method", "methods")}
    block = base.get("method") or {}
    options = {k: v for k, v in block.items() if k != "name"} if block.get("name") == name else {}
    own = dict((base.get("methods") or {}).get(name) or {})
    train = own.pop("train", None)
    options.update(own)
    if train:  # merged like overrides: `train: {early_stopping: {patience: 0}}` keeps the shared metric
        cfg["train"] = _merge(cfg.get("train") or {}, train)
    cfg["method"] = {"name": name, **options}
    cfg["output"] = str(folder / "runs")
    cfg["name"] = name
    return cfg
