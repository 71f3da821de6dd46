"""Test set-up: 8 fake CPU devices so sharding code runs as on a pod slice.

XLA reads XLA_FLAGS once, when jax first initialises its backend, so this must
run before any test module imports jax.
"""

import os

# LLVM at -O0: the tests' programs are small and run a few steps, so compiling
# them costs more than running them (one resume test: 95 s against 119 s at the
# default -O2). XLA's own passes, the sharding and the buffer assignment (the
# memory figures the dry-run tests compare) are the same at every level.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["GLD_JAX_TEST_XLA_FLAGS"] = TEST_XLA_FLAGS  # for workers that set their own
os.environ["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS} --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_configure(config):
    # Several tests compile the same EfficientNet steps; a persistent compilation
    # cache shared by the session turns repeats into cache hits.
    import tempfile

    import jax

    cache = os.environ.get("GLD_JAX_TEST_COMPILE_CACHE") or tempfile.mkdtemp(prefix="gldjax-xla-")
    os.environ["GLD_JAX_TEST_COMPILE_CACHE"] = cache  # subprocess workers share it
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# The longest files (measured with --durations), scheduled first: with one file
# per pytest-xdist worker at a time, a long file started last sets the wall time
# (`make test` passes --no-loadscope-reorder so xdist keeps this order).
_LONG_FILES = (
    "test_host_faults.py",
    "test_multihost.py",
    "test_trainer.py",
    "test_head_scoring.py",
    "test_object_storage.py",
    "test_tpu_compile.py",
    "test_recognize.py",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = item.path.name
        return _LONG_FILES.index(name) if name in _LONG_FILES else len(_LONG_FILES)

    items.sort(key=rank)  # stable: every file keeps its own order
