"""Tasks, registered by name: each says how examples become inputs and how outputs become metrics."""
from ..registry import Registry
from .base import Task
from .classification import ClassificationTask
from .extractive_qa import ExtractiveQATask
from .generation import GenerationTask
from .regression import RegressionTask

TASKS: Registry[Task] = Registry("task")
for _task in (ClassificationTask(), RegressionTask(), ExtractiveQATask(), GenerationTask()):
    TASKS.register(_task.name, _task)


def task_for(cfg) -> Task:
    """The task of a `RunConfig`, with the run's own task options."""
    return TASKS.get(cfg.task).configure(cfg)


__all__ = ["TASKS", "Task", "task_for"]
