"""Benchmarks: gld_jax's figures against a peer measured in the same run (BENCHMARKS.md)."""
