"""Benchmark: the Sub-center ArcFace head at GLDv2 scale on a (data, model) mesh.

Forward + backward of the loss w.r.t. embeddings and the class centres
[203,094, 3, 512] (312M parameters) for a batch of 256, on 8 fake CPU devices,
for several mesh shapes. Prints one JSON line per mesh: step time and the
per-device bytes from the compiled executable's memory analysis.

    python scripts/bench/head.py                      # meshes 8x1, 1x8, 2x4
    python scripts/bench/head.py --meshes 1x8 --classes 50000

A mesh whose 8 devices together would need more than --max_total_gb of host
memory is compiled and measured for memory, but not run (say so in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=203_094)
    ap.add_argument("--sub_centers", type=int, default=3)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--meshes", default="8x1,1x8,2x4")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max_total_gb", type=float, default=12.0)
    args = ap.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from gld_jax.losses import dynamic_margins, sub_center_arcface_loss
    from gld_jax.models.landmark import padded_num_classes
    from gld_jax.train.mesh import make_mesh

    valid, k, d, n = args.classes, args.sub_centers, args.dim, args.batch
    c = padded_num_classes(valid)  # the trainer's head rows: divisible over the mesh
    rng = np.random.default_rng(0)
    margins_np = np.full(c, 0.05, np.float32)
    margins_np[:valid] = np.asarray(dynamic_margins(rng.integers(1, 500, valid)), np.float32)

    def loss_and_grads(emb, centers, labels, margins):
        def f(e, w):
            losses = sub_center_arcface_loss(e, w, labels, margins, 80.0, num_valid_classes=valid)
            return jnp.mean(losses)

        return jax.value_and_grad(f, argnums=(0, 1))(emb, centers)

    for spec in args.meshes.split(","):
        dm, mm = (int(x) for x in spec.split("x"))
        mesh = make_mesh(dm, mm)
        data = NamedSharding(mesh, P("data"))
        head = NamedSharding(mesh, P("model", None, None))
        rep = NamedSharding(mesh, P())
        fn = jax.jit(
            loss_and_grads,
            in_shardings=(data, head, data, rep),
            out_shardings=(rep, (data, head)),
        )
        abstract = (
            jax.ShapeDtypeStruct((n, d), jnp.float32),
            jax.ShapeDtypeStruct((c, k, d), jnp.float32),
            jax.ShapeDtypeStruct((n,), jnp.int32),
            jax.ShapeDtypeStruct((c,), jnp.float32),
        )
        t0 = time.perf_counter()
        compiled = fn.lower(*abstract).compile()
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        per_device = int(
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        )
        row = {
            "mesh": f"{dm}x{mm}",
            "classes": valid,
            "head_rows": c,
            "sub_centers": k,
            "dim": d,
            "batch": n,
            "compile_s": round(compile_s, 1),
            "per_device_bytes": per_device,
            "per_device_gib": round(per_device / 2**30, 3),
            "head_bytes_per_device": c * k * d * 4 // mm,
        }
        if per_device * args.devices > args.max_total_gb * 2**30:
            row["step_s"] = None
            row["note"] = (
                f"not run: the {args.devices} fake devices share this host's memory and "
                f"together need {per_device * args.devices / 2**30:.1f} GiB"
            )
        else:
            emb = jax.device_put(rng.normal(size=(n, d)).astype(np.float32), data)
            centers = jax.device_put((rng.normal(size=(c, k, d)) * 0.02).astype(np.float32), head)
            labels = jax.device_put(rng.integers(0, valid, n).astype(np.int32), data)
            margins = jax.device_put(margins_np, rep)
            jax.block_until_ready(compiled(emb, centers, labels, margins))  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(emb, centers, labels, margins))
                times.append(time.perf_counter() - t0)
            row["step_s"] = round(float(np.median(times)), 3)
            del emb, centers
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
