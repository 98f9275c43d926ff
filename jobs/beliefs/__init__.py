"""Study `beliefs` (Lee et al., "Neural embedding of beliefs": does stance-aware fine-tuning
of a sentence encoder predict unseen beliefs?): registered on import."""

from jobs.beliefs import study  # noqa: F401
