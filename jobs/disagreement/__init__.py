"""Study `disagreement`: a text-measured disagreement index against counting misinformation."""

from jobs.disagreement import study  # noqa: F401  (registers the study)
