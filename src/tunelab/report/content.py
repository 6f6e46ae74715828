"""What a report shows, as data: `build` (report/__init__.py) fills a `Report`; `html.py` and `markdown.py`
render it."""
from __future__ import annotations

from dataclasses import dataclass, field

from .tuning import Tuned

TOP_PROMPTS = 10
PROMPT_COLUMNS = {"template": "input template", "label_template": "label template", "shots": "shots per class",
                  "weight": "prototype weight", "calibrate": "calibrated", "verbalizer": "label words",
                  "calibration": "calibrated on"}
GENERATION_PROMPT_COLUMNS = {**PROMPT_COLUMNS, "shots": "demonstrations"}  # open answers have no classes


@dataclass
class Image:
    """A figure: `name` is its file stem under figures/, `title` its heading and alt text."""
    name: str
    title: str
    png: bytes
    caption: str = ""


@dataclass
class Bars:
    """What the quality/cost charts' error bars show, for their legend and caption."""
    split: str
    legend: str
    caption: str


@dataclass
class Report:
    title: str
    facts: list[tuple[str, str]]
    recommended: str | None
    recommendation: str
    table: list[list[str]]
    failed: dict[str, str]
    charts: list[Image]
    curves: Image | None
    confusions: list[Image]
    warnings: dict[str, list[str]]
    prompt_search: dict[str, tuple[list[str], list[list[str]], int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)  # the methods the recommendation could not tell from the best
    tuning: list[Tuned] = field(default_factory=list)
    tuning_figure: Image | None = None

    def images(self) -> list[Image]:
        return (self.charts + ([self.curves] if self.curves else []) + self.confusions
                + ([self.tuning_figure] if self.tuning_figure else []))
