"""Studies that only benchmarks run (found through SKEPTIC_STUDY_PACKAGES=benchmarks.studies)."""
