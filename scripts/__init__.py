"""Command-line tools around gld_jax: evaluation, TPU pod jobs, benchmarks, experiments.

A package so the benchmarks and experiments import their shared helpers by name
(`scripts.bench.helpers`); each script is still run by its path from the
repository root.
"""
