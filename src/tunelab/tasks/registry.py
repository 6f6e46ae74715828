"""Tasks register themselves by name where they are defined (one instance each: a task is configured per run by
`Task.configure`, which returns a copy)."""
from __future__ import annotations

from ..registry import Registry
from .base import Task

TASKS: Registry[Task] = Registry("task")


def register(cls: type[Task]) -> type[Task]:
    TASKS.register(cls.name, cls())
    return cls
