"""Tasks, registered by name where each is defined: each says how data rows become examples, examples become
inputs, and outputs become metrics. Importing this package imports every module in it, which registers them all:
a new task is a new file here."""
import importlib
import pkgutil

from .base import Task
from .registry import TASKS

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def task_for(cfg) -> Task:
    """The task of a `RunConfig`, with the run's own task options."""
    return TASKS.get(cfg.task).configure(cfg)


__all__ = ["TASKS", "Task", "task_for"]
