"""JAX's persistent compilation cache beside a run, where it is safe to use."""

from __future__ import annotations

import os


def persistent_cache_is_safe(backend: str, num_devices: int) -> bool:
    """Whether executables may come from JAX's persistent compilation cache, for
    programs over `num_devices` devices (all processes').

    Not on XLA:CPU with several devices: there (jax 0.10.2) a train step loaded
    from the cache computed other gradients than the same step compiled afresh
    (gradient norm 174.33 against 168.61, reproducibly) and some runs hung in a
    collective; without the cache every run agreed. One CPU device (the demo),
    GPUs and TPUs keep the cache.
    """
    return backend != "cpu" or num_devices == 1


def enable_compilation_cache(workdir: str) -> None:
    """Persistent XLA cache beside the run, so a rerun or resume skips compiles."""
    import jax

    if "://" in workdir:  # remote workdirs: leave the cache to the user
        return
    # All processes' devices: a program's collectives span them all.
    if not persistent_cache_is_safe(jax.default_backend(), jax.device_count()):
        return
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
