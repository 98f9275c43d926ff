"""Study `ego_only` (Ego-Only: masked-autoencoder pretraining on egocentric video alone vs
exocentric transfer, for temporal action detection): registered on import."""

from jobs.ego_only import study  # noqa: F401
