"""What every prompt back-end shares: a candidate prompt of the search (what `PromptEngineering.choose` scores
and keeps), and how many training inputs calibration draws."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Unlabelled training inputs drawn to measure a candidate's bias (`inputs` calibration): each one is one more
# forward pass per calibrated candidate.
CALIBRATION_INPUTS = 256


@dataclass(frozen=True)
class Candidate:
    template: str
    label_template: str | None = None  # label scoring only (not generation)
    shots: int = 0
    calibrate: bool | None = None  # label scoring only
    weight: float | None = None  # encoders: the prototypes' weight
    verbalizer: str | None = None  # decoders: "label" (the label names) or "words" (the configured verbalizers)
    calibration: str | None = None  # decoders, when calibrated: "inputs" or "content_free"

    def cost(self) -> tuple:  # simpler first: fewer demonstrations, no calibration, built-in order
        return (self.shots, bool(self.calibrate), self.weight or 0.0)

    def row(self) -> dict[str, Any]:
        """The fields that apply to this candidate's back-end (the report's columns)."""
        return {k: v for k, v in asdict(self).items() if v is not None}
