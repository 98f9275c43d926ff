"""Study `few_shot` (Lee et al. 2023, few-shot fine-tuning vs SFUDA): registered on import."""

from jobs.few_shot import study  # noqa: F401
