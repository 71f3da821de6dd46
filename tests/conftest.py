"""Test set-up: 8 fake CPU devices so sharding code runs as on a pod slice.

XLA reads XLA_FLAGS once, when jax first initialises its backend, so this must
run before any test module imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
