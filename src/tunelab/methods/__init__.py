"""Methods, registered by name where each is defined. Importing this package registers them all."""
from . import adapter, full, lora, prompt  # noqa: F401  (registration)
from .base import Method, Run, TrainedMethod, count_parameters, head_modules
from .registry import METHODS

__all__ = ["METHODS", "Method", "Run", "TrainedMethod", "count_parameters", "head_modules"]
