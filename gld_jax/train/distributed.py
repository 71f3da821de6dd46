"""Multi-host start-up: `jax.distributed.initialize()` when asked to, with the
runtime's timeouts from config, the coordination service in a process of its
own (coordinator.py) and this process's peer monitor (peers.py).

On TPU VMs JAX finds the coordinator and the process ids itself; elsewhere the
config gives them. CPU processes (tests, debugging) need the gloo collectives.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess

import jax

from gld_jax.train import coordinator, peers, progress

ENV_FLAG = "GLD_JAX_DISTRIBUTED"

log = logging.getLogger(__name__)

_service: subprocess.Popen | None = None


def wants_distributed(dist_config) -> bool:
    return bool(dist_config.enabled) or os.environ.get(ENV_FLAG, "") not in ("", "0")


def runtime_heartbeat_s(heartbeat_timeout_s: float) -> int:
    """The runtime's own heartbeat timeout, in seconds. Its verdict is a fatal
    abort (exit 134, a C++ stack dump), so it is only a backstop behind the peer
    monitor's `heartbeat_timeout_s`: twice that plus 10 s."""
    return int(2 * heartbeat_timeout_s + 10)


def service_grace_s(heartbeat_timeout_s: float) -> float:
    """How long the coordination service outlives a process 0 that died without
    a word: long enough for every other monitor to notice (one timeout and a
    few beats) and stop."""
    return float(heartbeat_timeout_s) + 10.0


def _free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _addresses(dist_config, timeout_s: int) -> tuple[str | None, int | None, int | None]:
    """(coordinator "host:port", process count, this process's id) from the
    config, or detected as jax.distributed.initialize would (TPU VMs, SLURM);
    Nones when there is nothing to detect."""
    if dist_config.coordinator_address:
        return (
            dist_config.coordinator_address,
            int(dist_config.num_processes),
            int(dist_config.process_id),
        )
    from jax._src import clusters  # jax's own detection, run ahead of initialize

    try:
        address, count, pid, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
            None, None, None, None, None, timeout_s
        )
    except Exception:  # nothing detected: jax.distributed.initialize says what is missing
        return None, None, None
    return address, count, pid


def maybe_initialize_distributed(dist_config) -> bool:
    """Initialises the JAX distributed runtime if the config or environment asks;
    returns whether it did. Must run before anything touches jax devices.

    Process 0 first starts the coordination service in its own process and binds
    jax's in-process one to a spare local port, where nobody connects."""
    global _service
    if not wants_distributed(dist_config):
        return False
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeout_s = int(dist_config.heartbeat_timeout_s)
    kwargs = dict(
        initialization_timeout=int(dist_config.initialization_timeout_s),
        heartbeat_timeout_seconds=runtime_heartbeat_s(timeout_s),
        shutdown_timeout_seconds=int(dist_config.shutdown_timeout_s),
    )
    address, count, pid = _addresses(dist_config, kwargs["initialization_timeout"])
    if address is None:
        jax.distributed.initialize(**kwargs)
    else:
        if pid == 0:
            _service = coordinator.start(
                int(address.rsplit(":", 1)[1]),
                count,
                heartbeat_s=runtime_heartbeat_s(timeout_s),
                grace_s=service_grace_s(timeout_s),
            )
            peers.on_exit(lambda: coordinator.release(_service))
            kwargs["coordinator_bind_address"] = f"127.0.0.1:{_free_local_port()}"
        jax.distributed.initialize(address, count, pid, **kwargs)
    from jax._src.distributed import global_state  # the client jax's own modules use

    # At a normal exit this process says it is done (before jax's own atexit
    # shutdown, registered earlier, runs): see peers.PeerMonitor.finish.
    atexit.register(peers.finish_run, float(dist_config.shutdown_timeout_s))
    peers.start_monitor(
        global_state.client,
        global_state.process_id,
        global_state.num_processes,
        timeout_s,
        where=progress.where,
        service_address=global_state.coordinator_address or "",
    )
    return True


def client():
    """The distributed runtime's client (key-value store, barriers)."""
    from jax._src.distributed import global_state

    return global_state.client


def run_on_process_0(name: str, action, *, wait_s: float, waiting: str) -> None:
    """Process 0 runs `action()`; the others wait for it, at most `wait_s`
    seconds, on the coordination service's key-value store (no collective is
    involved, so none can time out meanwhile). When `action` raises on process
    0, the error goes on up there; the run's stop (peers.stop_run) then ends the
    waiting processes with the same line.

    Raises:
      SharedStepFailed: on a waiting process, when the wait ran out.
    """
    key = f"gld_jax/{name}"
    if jax.process_index() == 0:
        action()
        client().key_value_set(key, "ok")
        return
    log.info("%s (at most %g s, distributed.data_wait_s)", waiting, wait_s)
    try:
        client().blocking_key_value_get(key, int(wait_s * 1000))
    except jax.errors.JaxRuntimeError:
        raise SharedStepFailed(
            f"process 0 did not finish {name.replace('_', ' ')} within {wait_s:g} s "
            "(distributed.data_wait_s)"
        ) from None


def gather(name: str, value: str, *, wait_s: float) -> list[str]:
    """Every process's `value`, in process order, through the key-value store.

    Raises:
      SharedStepFailed: a process did not post within `wait_s` seconds.
    """
    c = client()
    c.key_value_set(f"gld_jax/{name}/{jax.process_index()}", value)
    out = []
    for p in range(jax.process_count()):
        try:
            out.append(c.blocking_key_value_get(f"gld_jax/{name}/{p}", int(wait_s * 1000)))
        except jax.errors.JaxRuntimeError:
            raise SharedStepFailed(
                f"process {p} did not report {name.replace('_', ' ')} within {wait_s:g} s"
            ) from None
    return out


class SharedStepFailed(RuntimeError):
    """A step the processes share did not complete in time; str() is one line."""
