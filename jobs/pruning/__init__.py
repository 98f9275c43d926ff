"""Study `pruning`: fine-tuned vs trained-from-scratch pruned networks (Liu et al. 2019)."""

from jobs.pruning import study  # noqa: F401  (registers the study)
