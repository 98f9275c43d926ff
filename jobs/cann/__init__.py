"""Study `cann` (Aiger et al. 2023, CANN vs global retrieval and aggregation): registered on
import."""

from jobs.cann import study  # noqa: F401
