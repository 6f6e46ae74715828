"""Tasks, registered by name: each says how examples become inputs and how scores become metrics."""
from ..registry import Registry
from .base import Task
from .classification import ClassificationTask
from .regression import RegressionTask

TASKS: Registry[Task] = Registry("task")
for _task in (ClassificationTask(), RegressionTask()):
    TASKS.register(_task.name, _task)

__all__ = ["TASKS", "Task"]
