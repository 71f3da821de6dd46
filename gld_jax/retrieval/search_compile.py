"""The accelerator search compiled for a TPU slice without one: XLA:TPU's own
figures for one query block, and the roofline of a whole query set.

Used by `scripts/bench/retrieval.py --compile_tpu` and the tests: nothing is
allocated, the index exists only as a shape (see gld_jax.train.aot).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gld_jax.retrieval import accelerator_search as acc
from gld_jax.train import aot

__all__ = ["compile_search"]


def compile_search(
    topology: str,
    *,
    rows: int,
    dim: int,
    queries: int,
    k: int,
    dtype: str,
    recall_target: float,
    peak_flops: float,
    hbm_bytes_per_second: float,
    memory_bytes: float,
    method: str | None = None,
) -> dict:
    """Compiles one query block of the search of `queries` x `rows` x `dim`
    for `topology` (e.g. "v5e:2x4") and returns XLA's per-device figures, the
    roofline of all the queries (blocks x max(FLOPs / peak, bytes /
    bandwidth), a lower bound) and the matmul's own bound.

    Args:
      peak_flops, hbm_bytes_per_second, memory_bytes: one device's figures.
      method: the per-device top-k (default: what a TPU runs, `search_method`).
    """
    devices = aot.topology_devices(topology)
    mesh = Mesh(np.array(devices), (acc.ROWS_AXIS,))
    approx = recall_target < 1
    method = method or acc.search_method(
        "tpu", dtype, dim, approx=approx, rows_per_device=math.ceil(rows / len(devices)), k=k
    )
    plan = acc.plan_search(
        rows,
        dim,
        devices=len(devices),
        dtype=dtype,
        k=k,
        memory_bytes=int(memory_bytes),
        method=method,
    )
    block = min(plan.query_block, queries)
    program = acc.program_for(
        plan, mesh, k=k, valid_rows=rows, dtype=dtype, approx=approx, recall_target=recall_target
    )
    q = jax.ShapeDtypeStruct((block, dim), acc.DTYPES[dtype], sharding=NamedSharding(mesh, P()))
    shard = jax.ShapeDtypeStruct(
        (plan.rows_per_device * len(devices), dim),
        acc.DTYPES[dtype],
        sharding=NamedSharding(mesh, P(acc.ROWS_AXIS, None)),
    )
    _, f = aot.compile_figures(program.lower(q, shard, shard))
    blocks = math.ceil(queries / block)
    per_block = f.roofline_seconds(peak_flops, hbm_bytes_per_second)
    matmul_flops = 2.0 * queries * rows * dim  # the whole problem
    return {
        "topology": topology,
        "devices": len(devices),
        "n": rows,
        "dim": dim,
        "queries": queries,
        "k": k,
        "dtype": dtype,
        "recall_target": recall_target,
        "method": plan.method,
        "bin_size": plan.bin_size,
        "query_block": block,
        "blocks": blocks,
        "per_device": {
            "argument_gib": round(f.argument_bytes / 2**30, 3),
            "temp_gib": round(f.temp_bytes / 2**30, 3),
            "peak_gib": round(f.peak_bytes / 2**30, 3),
            "tflops_per_block": round(f.flops / 1e12, 3),
            "gb_per_block": round(f.bytes_accessed / 1e9, 3),
        },
        "roofline_s": round(blocks * per_block, 4),
        "matmul_bound_s": round(matmul_flops / (len(devices) * peak_flops), 4),
        "compile_s": round(f.compile_seconds, 1),
    }
