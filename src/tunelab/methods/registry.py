"""Methods register themselves by name where they are defined."""
from __future__ import annotations

from ..registry import Registry
from .base import Method

METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    METHODS.register(cls.name, cls)
    return cls
