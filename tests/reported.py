"""Stand-ins for calling a study's code directly: a TrialContext for its `train` (one
process, every report kept; the study's own code runs, only Tune and MLflow are left out),
and judged comparisons for its decision rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from skeptic.api import Compare, Decision, Judged, OneProcess


@dataclass
class Reported(OneProcess):
    params: Any
    data: dict
    seed: int = 0
    upstream: dict = field(default_factory=dict)
    device: Any = "cpu"
    start_epoch: int = 0
    state: Any = None
    reports: list = field(default_factory=list)

    def report(self, metrics: dict, state: dict, samples: int = 0, progress: Any = None) -> None:
        self.reports.append((metrics, state))


def judged(decisions: dict[str, Decision]) -> dict[str, Judged]:
    """Comparisons by name, each with only its decision: what a study's `decide` reads."""
    return {name: Judged(Compare(name, {"arm": "a"}, {"arm": "b"}), None, 1.0, 1.0, 0.05, d)
            for name, d in decisions.items()}  # fmt: skip
