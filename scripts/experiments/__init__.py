"""Experiments behind design choices (kernel variants, XLA flags, label noise), not benchmarks."""
