"""The in-memory form of a dataset: validated examples with a note of where each came from."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Example:
    text: str
    label: str | float | None = None
    text_pair: str | None = None
    origin: str = ""  # "data/reviews.csv line 17": where to point the user when something is wrong
    messages: list[dict[str, str]] | None = None  # generation from a conversation: the turns before the answer
    group: str | None = None  # examples of one group (a Bible book) always land in the same split
    # Extractive QA: every accepted answer as (text, character offset in `text_pair`, the context);
    # `label` is then the first answer's text.
    answers: list[tuple[str, int]] | None = None


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    labels: list[str] = field(default_factory=list)  # empty for regression

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}
