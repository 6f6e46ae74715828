"""Tasks, registered by name where each is defined: each says how data rows become examples, examples become
inputs, and outputs become metrics. Importing this package registers them all."""
from . import classification, extractive_qa, generation, regression  # noqa: F401  (registration)
from .base import Task
from .registry import TASKS


def task_for(cfg) -> Task:
    """The task of a `RunConfig`, with the run's own task options."""
    return TASKS.get(cfg.task).configure(cfg)


__all__ = ["TASKS", "Task", "task_for"]
