"""One process of a two-process run on 127.0.0.1 without a model (driven by
tests/test_host_faults.py): gld-jax's real multi-host start-up (coordination
service process, peer monitor) and the training loop's step watchdog, around
a loop of gloo all-gathers that stand for training steps. Faults come from
GLD_JAX_TEST_FAULT (gld_jax/train/faults.py), as in a real run.

    python tests/host_fault_worker.py --process_id 0 --port 12345 \
        --heartbeat_s 5 --watchdog_s 8 --steps 400
"""

import argparse
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--process_id", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--heartbeat_s", type=int, required=True)
    ap.add_argument("--watchdog_s", type=float, required=True)
    ap.add_argument("--steps", type=int, required=True)
    args = ap.parse_args()
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.pop("XLA_FLAGS", None)  # one CPU device per process
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import numpy as np

    from gld_jax.config import base_config
    from gld_jax.train import faults, peers, progress
    from gld_jax.train.distributed import maybe_initialize_distributed
    from gld_jax.train.watchdog import run_watchdog

    d = base_config().distributed
    d.enabled = True
    d.coordinator_address = f"127.0.0.1:{args.port}"
    d.num_processes, d.process_id = 2, args.process_id
    d.heartbeat_timeout_s = args.heartbeat_s
    maybe_initialize_distributed(d)

    from jax.experimental import multihost_utils

    watchdog = run_watchdog(args.watchdog_s)
    multihost_utils.process_allgather(np.zeros(1))  # compiled before the watch starts
    for step in range(1, args.steps + 1):
        try:
            multihost_utils.process_allgather(np.full(1, step))
        except Exception as e:  # as gld_jax.main does
            peers.verdict_first(e)
            raise
        watchdog.step_done()
        progress.note_step(step)
        print(f"step {step} at {time.monotonic():.3f}", flush=True)
        faults.after_step(step, lambda: None)
        time.sleep(0.05)
    watchdog.close()
    print("finished", flush=True)


if __name__ == "__main__":
    main()
