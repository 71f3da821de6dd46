"""The converted data of a run, made ready before any collective is set up.

One process: `prepare_data` (generate if synthetic, convert if no manifest).
Several: they must all read one folder of TFRecords. They compare what they
see through the coordination service's key-value store (gld_jax.train.distributed),
never through a collective, so a process that stops here cannot leave the
others timing out in gloo's or XLA's set-up:

- every process sees the manifest: go on;
- none does and the data is synthetic: process 0 generates and converts it
  while the others wait (a log line, at most `distributed.data_wait_s`), then
  every process checks that it sees the manifest (a workdir that is not shared
  gives one line on every process);
- none does and the data is a GLDv2 folder: every process stops at once with
  the same line, which gives the conversion command (converting GLDv2 takes a
  machine for hours: do it once, before the pod run);
- some do and some do not: one line naming the processes that do not.

A failure of process 0's preparation stops every process with process 0's
line (the run's stop, gld_jax.train.peers). Errors are raised as DataNotShared
(a ValueError: exit 2 in main).
"""

from __future__ import annotations

import jax

from gld_jax.data import manifest
from gld_jax.data.prepare import prepare_data, resolve_dirs, shared_data_problem
from gld_jax.train import distributed


class DataNotShared(ValueError):
    """The processes cannot all read the same converted data; str() is one line."""


def prepare_shared_data(config, workdir: str) -> str:
    """Makes sure every process can read the run's TFRecords; returns their folder."""
    if jax.process_count() == 1:
        return prepare_data(config, workdir)
    data_dir, tfrecord_dir = resolve_dirs(config, workdir)
    dist = config.distributed

    def seen(name: str) -> list[bool]:
        have = "1" if manifest.exists(tfrecord_dir) else "0"
        return [v == "1" for v in distributed.gather(name, have, wait_s=dist.data_wait_s)]

    def check(views: list[bool], prepared: bool) -> None:
        problem = shared_data_problem(
            views,
            synthetic=bool(config.synthetic.enabled),
            tfrecord_dir=tfrecord_dir,
            data_dir=data_dir,
            prepared=prepared,
        )
        if problem:
            raise DataNotShared(problem)

    views = seen("data_seen")
    check(views, prepared=False)
    if all(views):
        return tfrecord_dir
    distributed.run_on_process_0(
        "data_preparation",
        lambda: prepare_data(config, workdir),
        wait_s=dist.data_wait_s,
        waiting=f"waiting for process 0 to generate and convert the synthetic data into "
        f"{tfrecord_dir}",
    )
    check(seen("data_seen_after_preparation"), prepared=True)
    return tfrecord_dir
