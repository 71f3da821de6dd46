"""Orbax checkpoints of the train state plus a small JSON record of where the run is.

Checkpoints are numbered by the global step (monotonic across stages). Orbax
writes each one to a temporary directory and renames it when complete, so an
interrupted save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

# Per-replica piece below which a replicated array is written whole by one replica.
# Orbax's replica-parallel save (its default on CPU and TPU) cuts every replicated
# array into one piece per replica with an eager `lax.slice`, i.e. one XLA compile
# per distinct piece: the demo model's first save on 8 devices compiled 650 slice
# programs (24 s). Small arrays, the vast majority, now go whole; the few large
# ones (wide kernels, embeddings) are still written in parallel across replicas.
MIN_REPLICA_PARALLEL_SLICE_BYTES = 8 << 20


@functools.cache  # once per process
def _register_array_handler() -> None:
    # Orbax 0.12.8 has no public name for the array-metadata store its default
    # handler uses (it records, e.g., PRNG-key array types); re-registering the
    # handler without one would lose that, so it is taken from where Orbax keeps it.
    from orbax.checkpoint._src.metadata import array_metadata_store

    # Orbax logs a warning for every override of a default handler; this one is
    # deliberate, so keep it out of the user's output.
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array,
            ocp.type_handlers.ArrayHandler(
                array_metadata_store=array_metadata_store.Store(),
                min_slice_bytes_for_replica_parallel=MIN_REPLICA_PARALLEL_SLICE_BYTES,
            ),
            override=True,
        )
    finally:
        absl_log.setLevel(level)


class Checkpointer:
    """Save/restore of {"state": pytree, "meta": json} under `directory`."""

    def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
        _register_array_handler()
        if "://" not in directory:  # Orbax's tensorstore paths must be absolute
            directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts a (possibly asynchronous) save; a second save at one step is a no-op."""
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )

    def restore_meta(self, step: int) -> dict:
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def restore(self, step: int, target: Any) -> Any:
        """Restores the state into the structure, shapes and shardings of `target`
        (a pytree of arrays or jax.ShapeDtypeStruct with .sharding)."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target
        )
        out = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        return out["state"]

    def restore_arrays(self, step: int) -> Any:
        """The saved state as nested dicts of host arrays, without a target (for
        inspection and tools; the trainer restores into a sharded target)."""
        out = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        return out["state"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
