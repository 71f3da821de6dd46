"""One process of a 2-process class-sharded head step on CPU (test_multihost.py).

    python tests/multihost_head_worker.py --process_id 0 --num_processes 2 \
        --port 12345 --out out-0.npz

Each process holds 4 fake devices and only its own rows of the global batch;
the mesh (data=2, model=4) puts one data group on each process and splits the
head's classes over the 4 devices of a process. Writes the loss and the
gathered gradients.
"""

import argparse
import os
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--process_id", type=int, required=True)
    ap.add_argument("--num_processes", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('GLD_JAX_TEST_XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    )
    os.environ["JAX_PLATFORMS"] = "cpu"
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    sys.path.insert(0, os.path.dirname(here))

    import numpy as np

    from gld_jax.config import base_config
    from gld_jax.train.distributed import maybe_initialize_distributed

    d = base_config().distributed
    d.enabled = True
    d.coordinator_address = f"127.0.0.1:{args.port}"
    d.num_processes, d.process_id = args.num_processes, args.process_id
    maybe_initialize_distributed(d)
    import jax
    from head_problem import loss_and_grads, problem
    from jax.experimental import multihost_utils

    from gld_jax.train import mesh as mesh_lib

    emb, centers, labels, margins = problem()
    mesh = mesh_lib.make_mesh(data=2, model=4)
    rows = mesh_lib.batch_sharding(mesh)
    head = jax.sharding.NamedSharding(mesh, mesh_lib.P("model", None, None))
    rep = mesh_lib.replicated(mesh)
    n = emb.shape[0] // args.num_processes
    mine = slice(args.process_id * n, (args.process_id + 1) * n)  # this host's rows only
    g_emb = jax.make_array_from_process_local_data(rows, emb[mine])
    g_lab = jax.make_array_from_process_local_data(rows, labels[mine])
    g_centers = jax.make_array_from_callback(centers.shape, head, lambda idx: centers[idx])
    g_margins = jax.make_array_from_callback(margins.shape, rep, lambda idx: margins[idx])
    fn = jax.jit(
        loss_and_grads,
        in_shardings=(rows, head, rows, rep),
        out_shardings=(rep, (rows, head)),
    )
    loss, (ge, gc) = fn(g_emb, g_centers, g_lab, g_margins)
    head_shard = gc.addressable_shards[0].data.shape[0]  # classes held per device
    ge, gc = multihost_utils.process_allgather((ge, gc), tiled=True)
    np.savez(
        args.out,
        loss=np.asarray(loss),
        grad_emb=ge,
        grad_centers=gc,
        process_count=jax.process_count(),
        head_shard=head_shard,
    )


if __name__ == "__main__":
    main()
