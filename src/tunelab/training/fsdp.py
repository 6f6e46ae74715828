"""Sharded data-parallel training (FSDP2, `torch.distributed.fsdp.fully_shard`) for full fine-tuning of a model
that does not fit one device, inside the one training loop (`loop.py`).

Data flows as in plain data parallelism (`distributed.py`): every process draws the same batch order and trains on
its part of each micro-batch, its loss weighted by its share of the step's targets. What changes is where the weights
live: each transformer block (the model's `_no_split_modules` classes, as accelerate's transformer auto-wrap policy
picks them) and then the root are sharded, so each process holds 1/W of every weight, gradient and optimizer state,
and gathers a block's weights only around its forward and backward. FSDP reduce-scatters the gradients in the
backward pass; it would average them over the processes, but each part's loss is already weighted by its share of
the whole step, so the reduction is set to a plain sum (divide factor 1, sum-only collectives): the update is the
whole batch's, as on one process, and the hand-made `all_reduce` is skipped. `clip_grad_norm_` on the sharded
gradients computes the global norm.

Every process must run every forward and backward together (they gather weights collectively): a process whose part
of a short micro-batch is empty trains on a stand-in row with weight 0 (`Filler`), evaluation runs a forward on a
stand-in batch where a process has no rows, and generation keeps the processes stepping together (`synced_gpus`).

Files are the same as without sharding: the run's model is the full, unsharded weights (`full_state_dict`, gathered
onto rank 0's CPU), and a checkpoint holds the whole tensors, in the same files and layout as without sharding
(`gathered`), which every process cuts into its shards again on resume (`shard_like`). The best epoch's weights are
kept as shards, on each process beside its own.

How it is turned on: `train.fsdp: true` under torchrun, or `accelerate launch` with `distributed_type: FSDP`
(configs/distributed/fsdp.yaml), whose `FSDP_*` settings are read here (`Options.from_launch`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no", "")


def asked_by_launcher() -> bool:
    """Whether `accelerate launch` was given a config with `distributed_type: FSDP`."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in _TRUE


@dataclass
class Options:
    """What an accelerate FSDP config sets that matters to this loop (its other keys are FSDP1's, or neutral)."""
    reshard_after_forward: bool = True  # free a block's gathered weights after its forward (gathered again backward)
    wrap: tuple[str, ...] | None = None  # the block classes sharded one by one; None: the model's _no_split_modules

    @classmethod
    def from_launch(cls) -> "Options":
        """The `FSDP_*` variables accelerate sets from its config; a value this loop does not do is refused, every
        such problem in one line."""
        env = {k: v for k, v in os.environ.items() if k.startswith("FSDP_")}
        problems, options = [], cls()

        def flag(name: str, default: str = "false") -> bool | None:
            value = env.get(name, default).lower()
            if value in _TRUE or value in _FALSE:
                return value in _TRUE
            problems.append(f"{name.lower()} must be true or false, got {value!r}")
            return None

        version = env.get("FSDP_VERSION", "2")
        if version != "2":
            problems.append(f"fsdp_version {version} is FSDP1; tunelab shards with FSDP2 (fully_shard): set "
                            f"fsdp_version: 2")
        reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "true").upper()
        if reshard in ("TRUE", "FULL_SHARD", "1"):
            options.reshard_after_forward = True
        elif reshard in ("FALSE", "SHARD_GRAD_OP", "0"):
            options.reshard_after_forward = False
        else:
            problems.append(f"fsdp_reshard_after_forward must be true or false, got {reshard.lower()!r}")
        strategy = env.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
        if strategy not in ("FULL_SHARD", "1"):  # accelerate passes its FSDP1 default on; FSDP2 reads reshard_…
            problems.append(f"fsdp_sharding_strategy {strategy} is not done (FSDP2 shards fully; "
                            f"fsdp_reshard_after_forward: false keeps the weights gathered between forward and "
                            f"backward)")
        policy = env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP").upper()
        if policy == "NO_WRAP":
            options.wrap = ()
        elif policy != "TRANSFORMER_BASED_WRAP":
            problems.append(f"fsdp_auto_wrap_policy {policy} is not done: use TRANSFORMER_BASED_WRAP (each "
                            f"transformer block sharded on its own) or NO_WRAP (the model as one unit)")
        if policy == "TRANSFORMER_BASED_WRAP" and env.get("FSDP_TRANSFORMER_CLS_TO_WRAP"):
            options.wrap = tuple(c.strip() for c in env["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(",") if c.strip())
        state_dict = env.get("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT").upper()
        if state_dict != "FULL_STATE_DICT":
            problems.append(f"fsdp_state_dict_type {state_dict} is not done: tunelab saves full weights (the run's "
                            f"model and its checkpoints); set FULL_STATE_DICT")
        for name, why in (("FSDP_OFFLOAD_PARAMS", "CPU offloading is not done"),
                          ("FSDP_CPU_RAM_EFFICIENT_LOADING", "every process loads the whole model once, then "
                                                             "shards it"),
                          ("FSDP_ACTIVATION_CHECKPOINTING", "use tunelab's train.gradient_checkpointing: true"),
                          ("FSDP_ACTIVATION_CHECKPOINTING_OFFLOAD", "not done"),
                          ("FSDP_FORWARD_PREFETCH", "an FSDP1 option")):
            if flag(name):
                problems.append(f"{name.lower()}: true is not supported ({why}); set it to false")
        if env.get("FSDP_IGNORED_MODULES"):
            problems.append("fsdp_ignored_modules is not supported: every module is sharded; remove it")
        # FSDP_MIN_NUM_PARAMS (size-based wrapping), FSDP_BACKWARD_PREFETCH and FSDP_USE_ORIG_PARAMS (FSDP1) and
        # FSDP_SYNC_MODULE_STATES (the weights are broadcast from rank 0 before sharding anyway) change nothing here.
        flag("FSDP_SYNC_MODULE_STATES", "true")
        if problems:
            raise ConfigError(f"the accelerate FSDP config asks for what tunelab's FSDP does not do: "
                              f"{'; '.join(problems)} (configs/distributed/fsdp.yaml is one that works)")
        return options


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def shard(model: nn.Module, device: torch.device, options: Options | None = None) -> nn.Module:
    """Shard `model` in place over every process (one mesh dimension): each block of the `options.wrap` classes
    (default: the model's `_no_split_modules`), then the root, which holds what is left (embeddings, head). The
    shards are placed on `device`; the gradient reduction sums (see the module's docstring)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    options = options or Options()
    names = set(options.wrap if options.wrap is not None else getattr(model, "_no_split_modules", None) or ())
    found = {type(m).__name__ for m in model.modules()}
    if names - found and options.wrap:
        raise ConfigError(f"fsdp_transformer_layer_cls_to_wrap names {', '.join(sorted(names - found))}, which "
                          f"{type(model).__name__} does not have; its module classes include: "
                          f"{', '.join(sorted(n for n in found if 'Layer' in n or 'Block' in n)) or 'none'}")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # Inner modules before the ones holding them (fully_shard's rule for nested units): reversed pre-order.
    blocks = [m for m in reversed(list(model.modules())) if type(m).__name__ in names and m is not model]
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=options.reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=options.reshard_after_forward)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # sum: each part's loss is already weighted by its share
            m.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM; a post-division by 1 is free
    return model


def describe(model: nn.Module) -> str:
    """For the log: how the model is sharded."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    def name(m: nn.Module) -> str:  # fully_shard makes a class FSDP<Name> over the module's own
        return next(c for c in type(m).__mro__ if not issubclass(c, FSDPModule)).__name__

    blocks = [name(m) for m in model.modules() if isinstance(m, FSDPModule) and m is not model]
    counts = {b: blocks.count(b) for b in dict.fromkeys(blocks)}
    listed = ", ".join(f"{n} {b}" if n > 1 else b for b, n in counts.items())
    units = f"{len(blocks) + 1} units: {listed} and the rest of" if blocks else "1 unit: the whole"
    return (f"FSDP: weights, gradients and optimizer state sharded over {dist.get_world_size()} processes, "
            f"{units} {name(model)}")


def full_value(x: torch.Tensor) -> torch.Tensor:
    """A sharded tensor's whole value (every process must call this, in the same order); a plain one as it is."""
    from torch.distributed.tensor import DTensor
    return x.full_tensor() if isinstance(x, DTensor) else x


def gathered(obj: Any, keep: bool = True) -> Any:
    """`obj` (a state dict, nested dicts and lists) with every sharded tensor replaced by its whole value on the
    CPU; every process must call this on the same structure. `keep=False` (the processes that do not write): take
    part in the gathering, one tensor at a time, and keep nothing (None)."""
    if isinstance(obj, torch.Tensor):
        whole = full_value(obj.detach())
        return whole.cpu() if keep else None
    if isinstance(obj, dict):
        return {k: gathered(v, keep) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(gathered(v, keep) for v in obj)
    return obj


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole `value` cut as `like` (a sharded parameter) is, from this process's own copy (no communication):
    each process reads the same checkpoint."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    if not isinstance(like, DTensor):
        return value.to(like.device)
    return distribute_tensor(value.to(like.device_mesh.device_type), like.device_mesh, like.placements,
                             src_data_rank=None)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole weights, unsharded on rank 0's CPU (empty elsewhere), under the model's own names, for
    `save_pretrained`; every process must call this."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class Filler(dict):
    """A stand-in micro-batch trained with weight 0: under FSDP a process whose part of a short last micro-batch is
    empty must still run the forward and backward, which gather and scatter the weights with the others."""
