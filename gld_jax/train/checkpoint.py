"""Orbax checkpoints of the train state plus a small JSON record of where the run is.

Checkpoints are numbered by the global step (monotonic across stages). Orbax
writes each one to a temporary directory and renames it when complete, so an
interrupted save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Save/restore of {"state": pytree, "meta": json} under `directory`."""

    def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
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
