"""Study beliefs: Lee et al., "Neural embedding of beliefs", re-run on simulated debate votes."""
