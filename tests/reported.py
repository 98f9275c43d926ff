"""A stand-in TrialContext for calling a study's `train` directly: one process, every
report kept (the study's own code runs; only Tune and MLflow are left out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from skeptic.api import OneProcess


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
