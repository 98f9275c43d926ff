"""Study `large_batch` (Hoffer et al. 2017): registered on import."""

from jobs.large_batch import study  # noqa: F401
