"""Data: built-in datasets, the user's files, validation and deterministic splits."""
from .builtin import DATASETS
from .examples import Example, Splits
from .load import load_splits, rows_to_examples

__all__ = ["DATASETS", "Example", "Splits", "load_splits", "rows_to_examples"]
