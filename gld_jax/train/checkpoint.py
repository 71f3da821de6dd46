"""Orbax checkpoints of the train state plus a small JSON record of where the run is.

Checkpoints are numbered by the global step (monotonic across stages). Orbax
writes each one to a temporary directory (on gs://: in place) and commits it
when every process has written its part: process 0 renames the folder (on
gs://: writes commit_success.txt). Only committed checkpoints are listed and
restored, so a save cut short at any point (SIGKILL between the write and the
commit included, tests/test_host_faults.py) leaves the previous checkpoint as
the latest; the next start deletes the leftover.

A save that fails (a full disk, a folder that became unwritable) raises
CheckpointWriteError with one line; the checkpoints before it stay.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp

from gld_jax.train import faults, progress

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


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; str() is one line."""


class _QuietBackgroundErrors(logging.Filter):
    # Orbax logs a failed background write with its traceback, then raises the
    # same error in the caller's next save or wait, where it becomes
    # CheckpointWriteError's one line: the log record would say it twice.
    def filter(self, record: logging.LogRecord) -> bool:
        return "_SignalingThread.run() raised an exception" not in record.getMessage()


@functools.cache
def _quiet_background_errors() -> None:
    logging.getLogger("absl").addFilter(_QuietBackgroundErrors())


def write_error_reason(e: BaseException) -> str:
    """The cause of a failed write in a few words: the OS's words when the error
    carries an errno (TensorStore's "[os_error_code='28']" included), else its
    first line."""
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)
    m = re.search(r"os_error_code='?(\d+)", str(e))
    if m:
        return os.strerror(int(m.group(1)))
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _kill_in_commit_class(directory: str, step: int):
    """Test hook (gld_jax.train.faults, kill_in_commit): Orbax's own temporary-path
    class for `directory`, whose commit of checkpoint `step` SIGKILLs the process
    first: the data of every process is written, the commit is not."""
    from etils import epath
    from orbax.checkpoint._src.path import atomicity_defaults

    base = atomicity_defaults.get_default_temporary_path_class(epath.Path(directory))

    class KillInCommit(base):
        async def finalize(self, *args, **kwargs):
            if self.get_final().name == str(step):
                faults.kill_now()
            return await super().finalize(*args, **kwargs)

    return KillInCommit


class Checkpointer:
    """Save/restore of {"state": pytree, "meta": json} under `directory`."""

    def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
        _register_array_handler()
        _quiet_background_errors()
        if "://" not in directory:  # Orbax's tensorstore paths must be absolute
            directory = os.path.abspath(directory)
        self.directory = directory
        self._pending: int | None = None  # the step of the save in flight
        hook_step = faults.kill_in_commit_step()
        self._manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=async_save,
                # the leftovers of a save cut short (never committed, never read)
                cleanup_tmp_directories=True,
                temporary_path_class=(
                    None if hook_step is None else _kill_in_commit_class(directory, hook_step)
                ),
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def _write_error(self, step: int | None, e: BaseException) -> CheckpointWriteError:
        try:
            last = progress.last_complete_checkpoint(self.directory)
        except Exception:  # the folder itself may be what failed
            last = None
        latest = "none" if last is None else f"step {last}"
        return CheckpointWriteError(
            f"the checkpoint of step {step} could not be written to {self.directory}: "
            f"{write_error_reason(e)}; the earlier checkpoints are kept "
            f"(latest complete: {latest})"
        )

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts a (possibly asynchronous) save; a second save at one step is a no-op.

        Raises:
          CheckpointWriteError: this save, or the one still in flight, failed.
        """
        if step in self._manager.all_steps():
            return
        self.wait()  # a failure of the save in flight is reported as its own
        self._pending = step
        try:
            faults.check_save(step, self.directory)
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
            )
        except (OSError, ValueError) as e:
            raise self._write_error(step, e) from e

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
        """Blocks until the save in flight is committed.

        Raises:
          CheckpointWriteError: it failed.
        """
        try:
            self._manager.wait_until_finished()
        except (OSError, ValueError) as e:
            raise self._write_error(self._pending, e) from e

    def close(self) -> None:
        self.wait()
        self._manager.close()
