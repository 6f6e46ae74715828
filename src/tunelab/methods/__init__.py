"""Methods, registered by name where each is defined. Importing this package imports every module in it, which
registers them all: a new method is a new file here."""
import importlib
import pkgutil

from .base import Method, Run, TrainedMethod, count_parameters, head_modules
from .registry import METHODS

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "Run", "TrainedMethod", "count_parameters", "head_modules"]
