"""Study `consciousness` (Bengio's Consciousness Prior: a top-k attention bottleneck against
dense and soft attention, out of distribution): registered on import."""

from jobs.consciousness import study  # noqa: F401
