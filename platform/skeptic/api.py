"""Everything a study imports from Skeptic, in one place.

    from skeptic.api import Spec, Study, TrialContext, TrialResult, Verdict, register_study

Importing it pulls in neither Ray nor MLflow: a study's module stays cheap to import, and
the engine (skeptic.runner, .trial, .stages, .tracking, .champion) depends on this API,
never the other way round.
"""

from skeptic.contexts import OneProcess, StageContext, TrialContext
from skeptic.data import DataError, DataPlan
from skeptic.schema import Outcome
from skeptic.spec import Spec, SpecError, grid_points, sweep_params
from skeptic.stats import Compare, Decision, Judged, Question, mean_ci, mean_ci_text, summarize
from skeptic.study import (
    Endpoint,
    Evidence,
    InvalidRequest,
    Preset,
    Stage,
    Study,
    TrialResult,
    register_study,
)

__all__ = [
    "Compare",
    "DataError",
    "DataPlan",
    "Decision",
    "Endpoint",
    "Evidence",
    "InvalidRequest",
    "Judged",
    "OneProcess",
    "Outcome",
    "Preset",
    "Question",
    "Spec",
    "SpecError",
    "Stage",
    "StageContext",
    "Study",
    "TrialContext",
    "TrialResult",
    "grid_points",
    "mean_ci",
    "mean_ci_text",
    "register_study",
    "summarize",
    "sweep_params",
]
