"""Nearest-neighbour search on the accelerators: one matmul per query block.

The index rows are split over every device of a 1-D mesh; a block of queries is
replicated; each device scores the block against its rows (float32
accumulation), keeps its own top-k (`lax.top_k`, exact, or `lax.approx_max_k`,
TPU-KNN's partial reduction, with its recall target), and the devices'
candidates are all-gathered and merged into the global top-k. Ids and labels
stay on the host; only row numbers come back.

At GLDv2 size with the recipe's ensemble (117,577 queries x 1.58M rows x 3,072
dimensions, 5.7e14 multiply-adds) this is about a second of a TPU slice or one
H200 at bf16 peak, with recall 1.0 in exact mode. ScaNN on the CPU stays the
default (`eval.search=scann`); this path is `eval.search=accelerator`, or
`auto`, which takes it when a TPU or GPU is present and the index fits.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gld_jax.config.defaults import SEARCHES
from gld_jax.retrieval.index import IndexRows, NeighborIndex

__all__ = [
    "AcceleratorIndex",
    "IndexTooLargeError",
    "SEARCHES",
    "device_memory_bytes",
    "plan_search",
    "resolve_search",
]

ROWS_AXIS = "rows"
# Of a device's memory: the index shard may take this much, and the query
# block's float32 scores a quarter of what remains (XLA's own buffers, the
# gathered candidates and other programs keep the rest).
INDEX_FRACTION = 0.6
SCORES_FRACTION = 0.25
CPU_SCORE_BUDGET = 256 * 2**20  # a CPU device reports no memory limit
MAX_QUERY_BLOCK = 8192
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class IndexTooLargeError(ValueError):
    """The index does not fit the devices; str() is one line naming the limit
    and the fallback."""


def device_memory_bytes(device: jax.Device) -> int | None:
    """The device's memory limit in bytes, or None where it reports none (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # some backends raise instead of returning None
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """How an index of `rows` x `dim` is laid out: rows per device (padded),
    the query block, and the bytes that decided them (per device)."""

    rows: int
    dim: int
    devices: int
    rows_per_device: int
    query_block: int
    index_bytes_per_device: int
    memory_bytes: int | None


def plan_search(
    rows: int,
    dim: int,
    *,
    devices: int,
    dtype: str,
    k: int,
    memory_bytes: int | None,
) -> SearchPlan:
    """The per-device layout of an index, and the largest query block whose
    [block, rows per device] float32 scores fit the device's memory budget.

    Raises:
      IndexTooLargeError: the index shard alone exceeds INDEX_FRACTION of a
        device's memory.
    """
    per_device = max(k, math.ceil(rows / devices))
    itemsize = jnp.dtype(DTYPES[dtype]).itemsize
    shard = per_device * dim * itemsize
    if memory_bytes is None:
        score_budget = CPU_SCORE_BUDGET
    else:
        limit = INDEX_FRACTION * memory_bytes
        if shard > limit:
            raise IndexTooLargeError(
                f"the index ({rows:,} x {dim} {dtype}) needs {shard / 2**30:.2f} GiB per "
                f"device on {devices} devices, over the {limit / 2**30:.2f} GiB limit "
                f"({INDEX_FRACTION:.0%} of {memory_bytes / 2**30:.1f} GiB): use "
                "eval.search=scann (the CPU path), bfloat16, or more devices"
            )
        score_budget = SCORES_FRACTION * (memory_bytes - shard)
    block = int(score_budget // (4 * per_device))
    block = max(8, min(MAX_QUERY_BLOCK, block - block % 8))
    return SearchPlan(rows, dim, devices, per_device, block, shard, memory_bytes)


def _local_then_merge(q, shard, *, k: int, valid_rows: int, approx: bool, recall: float, f32):
    # This device's rows start at axis_index * rows_per_device.
    per_device = shard.shape[0]
    first = jax.lax.axis_index(ROWS_AXIS) * per_device
    precision = jax.lax.Precision.HIGHEST if f32 else jax.lax.Precision.DEFAULT
    scores = jnp.einsum(
        "qd,nd->qn", q, shard, preferred_element_type=jnp.float32, precision=precision
    )
    row = first + jnp.arange(per_device)
    scores = jnp.where(row[None, :] < valid_rows, scores, -jnp.inf)  # padding rows
    local_k = min(k, per_device)
    if approx:
        vals, pos = jax.lax.approx_max_k(scores, local_k, recall_target=recall)
    else:
        vals, pos = jax.lax.top_k(scores, local_k)
    ids = pos.astype(jnp.int32) + first
    # [queries, devices * k] candidates in device order, i.e. by row within ties.
    vals = jax.lax.all_gather(vals, ROWS_AXIS, axis=1, tiled=True)
    ids = jax.lax.all_gather(ids, ROWS_AXIS, axis=1, tiled=True)
    best, at = jax.lax.top_k(vals, k)
    return best, jnp.take_along_axis(ids, at, axis=1)


def search_program(
    mesh: Mesh, *, k: int, valid_rows: int, approx: bool, recall_target: float, dtype: str
):
    """The jitted search of one query block: `(queries [B, D] replicated, rows
    [R, D] split over the mesh's rows axis) -> (scores [B, k], row numbers [B, k])`,
    both replicated; rows >= valid_rows are padding and never returned."""
    fn = functools.partial(
        _local_then_merge,
        k=k,
        valid_rows=valid_rows,
        approx=approx,
        recall=recall_target,
        f32=dtype == "float32",
    )
    mapped = jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(P(), P(ROWS_AXIS, None)),
        out_specs=(P(), P()),
        check_vma=False,
    )
    replicated = NamedSharding(mesh, P())
    return jax.jit(mapped, out_shardings=(replicated, replicated))


class AcceleratorIndex(IndexRows):
    """L2-normalised embeddings held sharded on the devices, searched by matmul.

    Same `search(queries, k)` contract as `index.NeighborIndex`: row numbers and
    cosines, best first, equal cosines by row number ascending (exact mode).

    Args:
      embeddings: [N, D] float32 rows (unit norm for cosines).
      num_neighbors: default k.
      dtype: "float32" (scores equal numpy's to float rounding) or "bfloat16"
        (half the memory and twice the matmul rate; cosines move by ~1e-3).
      approx: use `lax.approx_max_k` per device instead of an exact top-k.
      recall_target: approx_max_k's expected recall of each device's top-k.
      devices: the devices to spread the rows over (default: all).
      memory_bytes: per-device memory (default: what the device reports).
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        *,
        num_neighbors: int = 10,
        dtype: str = "float32",
        approx: bool = False,
        recall_target: float = 0.95,
        devices: list[jax.Device] | None = None,
        memory_bytes: int | None = None,
    ) -> None:
        emb = np.ascontiguousarray(embeddings, np.float32)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError(f"embeddings must be a non-empty [N, D] array, got {emb.shape}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if not 0 < recall_target <= 1:
            raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
        devices = list(devices or jax.devices())
        if memory_bytes is None:
            memory_bytes = device_memory_bytes(devices[0])
        self._embeddings = emb
        self.num_neighbors = num_neighbors
        self.dtype = dtype
        self.approx = approx
        self.recall_target = recall_target
        self.plan = plan_search(
            emb.shape[0],
            emb.shape[1],
            devices=len(devices),
            dtype=dtype,
            k=1,
            memory_bytes=memory_bytes,
        )
        self.mesh = Mesh(np.array(devices), (ROWS_AXIS,))
        padded = np.zeros((self.plan.rows_per_device * len(devices), emb.shape[1]), np.float32)
        padded[: emb.shape[0]] = emb
        sharding = NamedSharding(self.mesh, P(ROWS_AXIS, None))
        host = padded.astype(DTYPES[dtype])
        # Every process holds the whole index; each puts only its devices' rows.
        self._rows = jax.make_array_from_callback(
            host.shape, sharding, functools.partial(_slice, host)
        )
        self._replicated = NamedSharding(self.mesh, P())
        self._search = functools.lru_cache(maxsize=8)(self._compile)

    @property
    def kind(self) -> str:
        return "accelerator_approx" if self.approx else "accelerator_exact"

    def __repr__(self) -> str:
        return (
            f"AcceleratorIndex(kind={self.kind!r}, size={self.size}, dim={self.dim}, "
            f"dtype={self.dtype!r}, devices={self.plan.devices})"
        )

    def save(self, directory: str) -> None:
        """Writes the rows as an exact index (index.NeighborIndex.save): the
        layout on the devices is rebuilt from them when loaded."""
        NeighborIndex(self._embeddings, num_neighbors=self.num_neighbors).save(directory)

    def _compile(self, k: int):
        return search_program(
            self.mesh,
            k=k,
            valid_rows=self.size,
            approx=self.approx,
            recall_target=self.recall_target,
            dtype=self.dtype,
        )

    def search(
        self, queries: np.ndarray, k: int | None = None, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest rows of each query by dot product.

        Args:
          queries: [Q, D] float32 (L2-normalised for cosines).
          k: neighbours per query (default num_neighbors), clamped to the size.
          batch_size: queries per block (default: the plan's, from device memory).

        Returns:
          (row numbers [Q, k] int64, scores [Q, k] float32), best first.
        """
        k = min(self.num_neighbors if k is None else k, self.size)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = np.ascontiguousarray(queries, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"dim mismatch: index {self.dim}, queries {queries.shape}")
        block = batch_size or min(self.plan.query_block, -(-len(queries) // 8) * 8)
        search = self._search(k)
        out_idx = np.zeros((len(queries), k), np.int64)
        out_val = np.zeros((len(queries), k), np.float32)
        for start in range(0, len(queries), block):
            part = queries[start : start + block]
            # Whole blocks only: one compiled shape, the last block zero-padded.
            padded = np.zeros((block, self.dim), np.float32)
            padded[: len(part)] = part
            padded = padded.astype(DTYPES[self.dtype])
            q = jax.make_array_from_callback(
                padded.shape, self._replicated, functools.partial(_slice, padded)
            )
            vals, ids = jax.device_get(search(q, self._rows))
            out_idx[start : start + len(part)] = ids[: len(part)]
            out_val[start : start + len(part)] = vals[: len(part)]
        return out_idx, out_val


def _slice(array: np.ndarray, index) -> np.ndarray:
    return array[index]


def resolve_search(search: str, *, rows: int, dim: int, dtype: str = "float32") -> str:
    """The search an `eval.search` value runs here: "scann", "exact_cpu" or
    "accelerator". "auto" takes the accelerator when a TPU or GPU is present and
    the index fits its memory (plan_search), ScaNN otherwise."""
    if search not in SEARCHES:
        raise ValueError(f"eval.search: {search!r}; expected one of {', '.join(SEARCHES)}")
    if search != "auto":
        return search
    if jax.default_backend() == "cpu":
        return "scann"
    devices = jax.devices()
    try:
        plan_search(
            rows,
            dim,
            devices=len(devices),
            dtype=dtype,
            k=1,
            memory_bytes=device_memory_bytes(devices[0]),
        )
    except IndexTooLargeError:
        return "scann"
    return "accelerator"
