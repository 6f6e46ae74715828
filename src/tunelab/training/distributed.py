"""Data-parallel training over the processes that `torchrun --nproc_per_node N` (or `accelerate launch`) starts.

Every process runs the same command and the same one loop (`loop.py`) on the same data order; each trains on its
share of every step's batch, and the gradients are summed across processes before the update, so all hold the same
weights at every step. Gradients are summed here by hand, one `all_reduce` of all trainable gradients per step,
rather than by wrapping the model in `DistributedDataParallel`: the model keeps its own parameter names (checkpoints,
adapters and the best weights are saved from it unchanged), a weight that one process's share leaves unused (a frozen
pooler, an empty share at an epoch's end) needs no `find_unused_parameters`, and a step's loss weights stay exact
(below). What that costs is DDP's overlap of communication with the backward pass, which matters on several GPUs with
a large model, not for the small models this toolkit trains on CPUs.

A step is the config's global batch (`train.batch_size` × `train.gradient_accumulation_steps` examples, in the order
one process would use); process r takes the r-th of W near-equal contiguous parts of each micro-batch. Each part's
mean loss is weighted by its share of the step's targets (summed over processes), so the summed gradient is the one
of the whole batch's mean loss, as on one process, even at an epoch's uneven last batch.

Evaluation shards the features the same way and gathers every process's outputs by index, so each process holds
the whole split's outputs, with no feature counted twice or lost; the metrics, and every decision taken from them
(the best epoch, early stopping), are then the same on every process, and are broadcast from rank 0 to be sure.

Sharded training (FSDP, `train.fsdp`) keeps this data flow and changes where the weights live: `fsdp.py`.

Backends: gloo on CPU, nccl on CUDA (one GPU per process, `LOCAL_RANK`). Outside torchrun everything here is a no-op.
"""
from __future__ import annotations

import os
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def launched() -> int:
    """How many processes the launcher started (torchrun's WORLD_SIZE; 1 without one), before joining them: a
    config that cannot run on that many is refused before any process waits for another."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def unsupported_launch() -> str | None:
    """What an `accelerate launch` config asked for that this loop does not do (DeepSpeed), or None: it would
    otherwise run as plain data parallelism, every process holding the whole model, without a word. (FSDP is done:
    `fsdp.py`.)"""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true", "yes"):
        return "DeepSpeed (distributed_type: DEEPSPEED)"
    return None


def setup() -> int:
    """Join the process group when this process was started by torchrun (WORLD_SIZE > 1); returns its size."""
    if launched() > 1 and dist.is_available() and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # `device()`'s "cuda" is this GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world()


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """The process that writes files, logs and trackers: rank 0, or the only one."""
    return rank() == 0


def _device() -> torch.device:
    # nccl moves tensors between GPUs only; gloo between CPUs.
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def part(items: Sequence[T], r: int | None = None, w: int | None = None) -> Sequence[T]:
    """Process r's share of `items`: the r-th of w contiguous parts whose sizes differ by at most one (the first
    len % w parts get one more), so that the parts, in rank order, are `items` again."""
    r, w = rank() if r is None else r, world() if w is None else w
    base, extra = divmod(len(items), w)
    start = r * base + min(r, extra)
    return items[start:start + base + (r < extra)]


def agree(value: T) -> T:
    """Rank 0's `value` on every process: a decision that must not differ between them."""
    if world() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def total(value: float) -> float:
    """The sum of `value` over the processes."""
    if world() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return float(t.item())


def largest(value: int) -> int:
    """The largest of `value` over the processes (a signal that one of them received stops them all)."""
    if world() == 1:
        return value
    t = torch.tensor([int(value)], dtype=torch.int64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather(local: list[T]) -> list[T]:
    """Every process's `local` list (each its `part` of the same sequence), joined in rank order: the whole
    sequence on every process, no item twice or missing."""
    if world() == 1:
        return list(local)
    parts: list[Any] = [None] * world()
    dist.all_gather_object(parts, list(local))
    return [x for p in parts for x in p]


def sum_gradients(params: list[torch.nn.Parameter], extra: list[float]) -> list[float]:
    """Sum the gradients of `params` over the processes, in place, in one `all_reduce`, with the numbers `extra`
    riding along; returns their sums. A gradient that is None on every process stays None (AdamW skips such a
    weight, as on one process); one that is None on some only counts there as zeros."""
    if world() == 1:
        return extra
    dev = params[0].device if params else torch.device("cpu")
    flat = torch.cat([*(p.grad.detach().reshape(-1).float() if p.grad is not None else
                        torch.zeros(p.numel(), device=dev) for p in params),
                      torch.tensor([float(p.grad is not None) for p in params] + list(extra), device=dev)])
    flat = flat.to(_device())
    dist.all_reduce(flat)
    flat = flat.to(dev)
    n_grad = sum(p.numel() for p in params)
    has, sums = flat[n_grad:n_grad + len(params)], flat[n_grad + len(params):]
    offset = 0
    for p, present in zip(params, has.tolist()):
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype).clone() if present else None
        offset += n
    return sums.tolist()


def broadcast_parameters(params: list[torch.nn.Parameter]) -> None:
    """Rank 0's values of `params` on every process (the start of training: each process built its model from the
    same seed, and this makes sure)."""
    if world() == 1 or not params:
        return
    flat = torch.cat([p.detach().reshape(-1).float() for p in params]).to(_device())
    dist.broadcast(flat, src=0)
    offset = 0
    with torch.no_grad():
        for p in params:
            p.copy_(flat[offset:offset + p.numel()].view_as(p).to(p.device, p.dtype))
            offset += p.numel()


def gather_to_main(value: T) -> list[T] | None:
    """Every process's `value` in rank order on rank 0 (None elsewhere); all processes must call it."""
    if world() == 1:
        return [value]
    out: list[Any] | None = [None] * world() if is_main() else None
    dist.gather_object(value, out, dst=0)
    return out


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def finish() -> None:
    """Leave the process group (at the end of the command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
