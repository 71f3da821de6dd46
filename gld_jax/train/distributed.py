"""Multi-host start-up: `jax.distributed.initialize()` when asked to.

On TPU VMs JAX finds the coordinator and the process ids itself; elsewhere the
config gives them. CPU processes (tests, debugging) need the gloo collectives.
"""

from __future__ import annotations

import os

import jax

ENV_FLAG = "GLD_JAX_DISTRIBUTED"


def wants_distributed(dist_config) -> bool:
    return bool(dist_config.enabled) or os.environ.get(ENV_FLAG, "") not in ("", "0")


def maybe_initialize_distributed(dist_config) -> bool:
    """Initialises the JAX distributed runtime if the config or environment asks;
    returns whether it did. Must run before anything touches jax devices."""
    if not wants_distributed(dist_config):
        return False
    kwargs = {}
    if dist_config.coordinator_address:
        kwargs = dict(
            coordinator_address=dist_config.coordinator_address,
            num_processes=dist_config.num_processes,
            process_id=dist_config.process_id,
        )
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True
