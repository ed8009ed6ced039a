"""Analysis helpers behind tools/analysis/: training curves, feature-similarity maps."""
