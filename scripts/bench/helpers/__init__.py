"""What the benchmarks share: photo-like inputs, the timm peer's step (run in its own Python)."""
