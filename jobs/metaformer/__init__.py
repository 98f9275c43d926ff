"""Study `metaformer` (Yu et al. 2022, PoolFormer): registered on import."""

from jobs.metaformer import study  # noqa: F401
