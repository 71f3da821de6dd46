"""One process of a multi-host training run on CPU (driven by test_multihost.py).

    python tests/multihost_worker.py --process_id 0 --num_processes 2 --port 12345 \
        --devices 4 --data_root DIR --workdir DIR --steps 2 --resume_steps 1 --out out.json
"""

import argparse
import json
import os
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--process_id", type=int, default=0)
    ap.add_argument("--num_processes", type=int, default=1)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--data_root", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument(
        "--resume_steps",
        type=int,
        default=0,
        help="then train again in the same processes: restore the checkpoint just "
        "written and run this many more steps",
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('GLD_JAX_TEST_XLA_FLAGS', '')} "
        f"--xla_force_host_platform_device_count={args.devices}"
    )
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    from tiny import tiny_config

    from gld_jax.train.distributed import maybe_initialize_distributed

    config = tiny_config(os.path.join(args.data_root, "data"))
    config.data_sharding = "global"  # same global batches for any process count
    # SGD: updates proportional to gradients. Adam's first steps are ~lr*sign(g),
    # which turns the last-bit differences of another all-reduce order (gloo
    # across processes vs in-process) into visible parameter differences.
    config.optimizer.name = "sgd"
    # From scratch the gradient norm is ~3e3: at the demo's rates the trajectory
    # is chaotic and last-bit differences grow past 1e-5 within a step. A tiny
    # rate keeps it smooth: the loss curve then checks the data order, forward
    # pass and resume, and the per-step gradient norms the backward pass and the
    # cross-process all-reduce.
    for stage in config.stages:
        stage.learning_rate = 1e-7
    if args.num_processes > 1:
        config.distributed.enabled = True
        config.distributed.coordinator_address = f"127.0.0.1:{args.port}"
        config.distributed.num_processes = args.num_processes
        config.distributed.process_id = args.process_id
    maybe_initialize_distributed(config.distributed)

    # No persistent compilation cache here (unlike the other tests): on XLA:CPU
    # a multi-device train step loaded from it computed other gradients than
    # the same step compiled afresh, and some runs hung in a collective
    # (gld_jax.utils.compile_cache). Each call compiles its own.
    import jax

    from gld_jax.data.batches import host_batches
    from gld_jax.data.prepare import resolve_dirs
    from gld_jax.train.mesh import make_mesh
    from gld_jax.train.trainer import train

    _, tfrecord_dir = resolve_dirs(config, args.data_root)
    assert jax.device_count() == args.devices * args.num_processes
    histories = []
    for steps in (args.steps, args.resume_steps):
        if steps:
            result = train(
                config,
                workdir=args.workdir,
                tfrecord_dir=tfrecord_dir,
                mesh=make_mesh(-1, 1),
                batches=host_batches(config, tfrecord_dir),
                stop_after_steps=steps,
            )
            histories.append(result.history)
    with open(args.out, "w") as f:
        json.dump({"histories": histories, "process_count": jax.process_count()}, f)


if __name__ == "__main__":
    main()
