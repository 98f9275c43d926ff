"""Skeptic: re-run deep-learning 'common beliefs' as tracked Ray Tune studies."""

from skeptic.study import Study, TrialResult, Verdict, get_study, register_study

__all__ = ["Study", "TrialResult", "Verdict", "get_study", "register_study"]
__version__ = "0.1.0"
