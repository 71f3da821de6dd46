"""Nearest-neighbour search on the accelerators: matmuls over a sharded index.

The index rows are split over every device of a 1-D mesh; a block of queries is
replicated; each device finds its own exact top-k, and the devices' candidates
are all-gathered and merged into the global top-k. Ids and labels stay on the
host; only row numbers come back.

How a device finds its top-k (`method`, chosen per backend by `search_method`):

- "binned" (CPUs and float32 on GPUs) and "pallas" (bfloat16 on GPUs), "partial"
  (TPUs): the two-stage exact search of `gld_jax.retrieval.binned_topk`: each bin
  of consecutive rows keeps only its maximum score, then the rows of the k best
  bins are rescored. On GPUs the maxima come from a fused Pallas kernel
  (`pallas_bin_max`), on TPUs from XLA:TPU's fused partial reduction, so the
  `[block, rows]` scores never make a round trip through HBM.
- "onepass": a float32 `[block, rows]` score matrix and `lax.top_k` over it,
  the reference the others are tested against, and the fallback of a TPU
  block whose partial reduction fails its check.
- approximate (`search_recall` < 1): `lax.approx_max_k` (TPU-KNN) per device,
  on TPUs; XLA has no faster form of it on CPUs and GPUs, where the search
  stays exact.

At GLDv2 size with the recipe's ensemble (117,577 queries x 1.58M rows x 3,072
dimensions, 5.7e14 multiply-adds) this is about a second of a TPU slice or one
H200 at bf16 peak. ScaNN on the CPU stays the default (`eval.search=scann`);
this path is `eval.search=accelerator`, or `auto`, which takes it when a TPU or
GPU is present and the index fits.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gld_jax.config.defaults import SEARCHES
from gld_jax.retrieval import binned_topk
from gld_jax.retrieval.index import IndexRows, NeighborIndex

__all__ = [
    "AcceleratorIndex",
    "IndexTooLargeError",
    "SEARCHES",
    "device_memory_bytes",
    "plan_search",
    "program_for",
    "resolve_search",
    "search_method",
    "search_program",
]

log = logging.getLogger(__name__)

ROWS_AXIS = "rows"
# Of a device's memory: the index shard may take this much, and the query
# block's float32 scores a quarter of what remains (XLA's own buffers, the
# gathered candidates and other programs keep the rest).
INDEX_FRACTION = 0.6
SCORES_FRACTION = 0.25
CPU_SCORE_BUDGET = 256 * 2**20  # a CPU device reports no memory limit
MAX_QUERY_BLOCK = 8192
# A query block of the fused GPU kernel stays in L2 while every row tile
# streams past it once: 16 MB of queries (8,192 at 512 dims, 2,688 at 3,072).
L2_QUERY_BYTES = 16 * 2**20
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
METHODS = ("onepass", "binned", "pallas", "pallas_interpret", "partial", "partial_emulated")
# The TPU's partial reduction keeps one maximum per 2^r columns; rows per device
# are padded to a multiple of this so every reduction window is whole.
PARTIAL_MULTIPLE = 4096


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
    """How an index of `rows` x `dim` is laid out: rows per device (padded to
    whole bins), the bin size, the query block, and the bytes that decided
    them (per device)."""

    rows: int
    dim: int
    devices: int
    rows_per_device: int
    query_block: int
    index_bytes_per_device: int
    memory_bytes: int | None
    method: str = "onepass"
    bin_size: int = 1


def search_method(
    backend: str,
    dtype: str,
    dim: int,
    *,
    approx: bool = False,
    rows_per_device: int | None = None,
    k: int = 5,
) -> str:
    """The per-device top-k a backend runs (see the module docstring).

    On TPUs the choice follows the HBM traffic each adds to the matmul, per
    query: one pass writes and reads a float32 score per row (8 bytes x rows);
    the partial reduction writes and reads a maximum and its index per bin
    (16 bytes x rows / G) and gathers k bins of G rows. Wide rows on few
    devices (3,072 dims over 32 v3 cores: 395 against 540 kB) favour one pass;
    GLDv2 at 512 dims on a v5e-8, the bins (1.58 MB against 0.28 MB)."""
    if approx and backend == "tpu":
        return "onepass"  # approx_max_k, aggregated: TPU-KNN
    if backend == "tpu":
        if rows_per_device is None:
            return "partial"
        g = binned_topk.bin_size_for(rows_per_device)
        itemsize = jnp.dtype(DTYPES[dtype]).itemsize
        onepass = 8 * rows_per_device
        partial = 16 * rows_per_device // g + k * g * dim * itemsize
        return "partial" if partial < onepass else "onepass"
    if backend == "gpu":
        from gld_jax.retrieval.pallas_bin_max import pallas_supported

        return "pallas" if pallas_supported(dim, DTYPES[dtype]) else "binned"
    return "binned"


def plan_search(
    rows: int,
    dim: int,
    *,
    devices: int,
    dtype: str,
    k: int,
    memory_bytes: int | None,
    method: str = "onepass",
) -> SearchPlan:
    """The per-device layout of an index, and the largest query block whose
    working set fits the device's memory budget: the [block, rows per device]
    float32 scores where they are formed (onepass, binned, partial), the bins'
    maxima and the rescored rows of the fused kernel.

    Raises:
      IndexTooLargeError: the index shard alone exceeds INDEX_FRACTION of a
        device's memory (the TPU path stores it twice: two row orders).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    per_device = max(k, math.ceil(rows / devices))
    bin_size = 1
    if method != "onepass":
        bin_size = binned_topk.bin_size_for(per_device)
        multiple = PARTIAL_MULTIPLE if method.startswith("partial") else 1
        if method.startswith("pallas"):
            from gld_jax.retrieval import pallas_bin_max

            multiple = pallas_bin_max.DEFAULT_TILES.bn
        per_device = binned_topk.padded_rows(rows, devices, bin_size, multiple)
    itemsize = jnp.dtype(DTYPES[dtype]).itemsize
    copies = 2 if method.startswith("partial") else 1
    shard = copies * per_device * dim * itemsize
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
    if method.startswith("pallas"):
        per_query = 4 * per_device // bin_size + k * bin_size * dim * itemsize
        cap = min(MAX_QUERY_BLOCK, L2_QUERY_BYTES // (dim * itemsize))
        from gld_jax.retrieval import pallas_bin_max

        step = pallas_bin_max.DEFAULT_TILES.bq  # the kernel's query tile
    else:
        per_query = 4 * per_device
        cap, step = MAX_QUERY_BLOCK, 8
    block = int(min(cap, score_budget // per_query))
    block = max(step, block - block % step)
    return SearchPlan(rows, dim, devices, per_device, block, shard, memory_bytes, method, bin_size)


def _merge(vals, ids, k: int):
    # [queries, devices * k] candidates in device order, i.e. by row within ties.
    vals = jax.lax.all_gather(vals, ROWS_AXIS, axis=1, tiled=True)
    ids = jax.lax.all_gather(ids, ROWS_AXIS, axis=1, tiled=True)
    best, at = jax.lax.top_k(vals, k)
    return best, binned_topk.select_columns(ids, at)


def _local_search(q, stage1, rows, *, k, valid_rows, method, bin_size, approx, recall, f32):
    """One device's top-k of the replicated block `q` among its `rows`, merged
    over the mesh. `stage1` is the same rows in the order stage 1 reads them
    (the TPU's strided bins); other methods are given `rows` twice."""
    per_device = rows.shape[0]
    first = jax.lax.axis_index(ROWS_AXIS) * per_device
    precision = jax.lax.Precision.HIGHEST if f32 else jax.lax.Precision.DEFAULT
    local_k = min(k, per_device)
    ok = jnp.bool_(True)
    if method == "onepass":
        scores = binned_topk.mask_padding(
            jnp.einsum(
                "qd,nd->qn", q, rows, preferred_element_type=jnp.float32, precision=precision
            ),
            first + jnp.arange(per_device)[None],
            valid_rows,
        )
        if approx:
            vals, pos = jax.lax.approx_max_k(scores, local_k, recall_target=recall)
        else:
            vals, pos = jax.lax.top_k(scores, local_k)
        vals, ids = vals, pos.astype(jnp.int32) + first
    else:
        common = dict(first_row=first, valid_rows=valid_rows, precision=precision)
        if method == "binned":
            maxima = binned_topk.bin_max_xla(q, rows, bin_size=bin_size, **common)
        elif method.startswith("pallas"):
            from gld_jax.retrieval.pallas_bin_max import bin_max_pallas

            valid_local = jnp.clip(valid_rows - first, 0, per_device).astype(jnp.int32)
            maxima = bin_max_pallas(
                q,
                rows,
                valid_local[None],
                bin_size=bin_size,
                interpret=method == "pallas_interpret",
            )
        elif method == "partial":
            maxima, ok = binned_topk.bin_max_approx_partial(
                q, stage1, k=local_k, recall_target=recall, **common
            )
        else:  # partial_emulated: the TPU path's layout, with the bins written out
            maxima, ok = binned_topk.bin_max_emulated_partial(
                q, stage1, num_bins=per_device // bin_size, **common
            )
        vals, ids = binned_topk.rescore_bins(
            q, rows, maxima, k=local_k, bin_size=bin_size, **common
        )
    best, ids = _merge(vals, ids, k)
    ok = jax.lax.pmin(ok.astype(jnp.int32), ROWS_AXIS) > 0
    return best, ids, ok


def search_program(
    mesh: Mesh,
    *,
    k: int,
    valid_rows: int,
    approx: bool,
    recall_target: float,
    dtype: str,
    method: str = "onepass",
    bin_size: int = 1,
):
    """The jitted search of one query block: `(queries [B, D] replicated,
    stage-1 rows and rows [R, D] split over the mesh's rows axis) -> (scores
    [B, k], row numbers [B, k], ok)`, all replicated; rows >= valid_rows are
    padding and never returned. `ok` is False only when a TPU's partial
    reduction did not bin as expected: search that block with "onepass"."""
    fn = functools.partial(
        _local_search,
        k=k,
        valid_rows=valid_rows,
        method=method,
        bin_size=bin_size,
        approx=approx,
        recall=recall_target,
        f32=dtype == "float32",
    )
    rows_spec = P(ROWS_AXIS, None)
    mapped = jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(P(), rows_spec, rows_spec),
        out_specs=(P(), P(), P()),
        check_vma=False,
    )
    replicated = NamedSharding(mesh, P())
    return jax.jit(mapped, out_shardings=(replicated, replicated, replicated))


def program_for(
    plan: SearchPlan,
    mesh: Mesh,
    *,
    k: int,
    valid_rows: int,
    dtype: str,
    approx: bool = False,
    recall_target: float = 1.0,
    method: str | None = None,
):
    """`search_program` for an index laid out by `plan` (its method unless
    `method` is given). The TPU's partial reduction takes the recall target
    whose bins match the plan's; where no target gives them for this k, the
    block is searched in one pass."""
    method = method or plan.method
    if method == "partial":
        local_k = min(k, plan.rows_per_device)
        bins = plan.rows_per_device // plan.bin_size
        recall_target = binned_topk.partial_recall(
            plan.rows_per_device, binned_topk.partial_k(local_k), bins
        )
        if recall_target is None:
            method, recall_target = "onepass", 1.0
    return search_program(
        mesh,
        k=k,
        valid_rows=valid_rows,
        approx=approx,
        recall_target=recall_target,
        dtype=dtype,
        method=method,
        bin_size=plan.bin_size,
    )


def stage1_order(method: str, rows_per_device: int, bin_size: int) -> np.ndarray | None:
    """The row order stage 1 reads within each device's shard (TPU strided
    bins), as original positions; None when it reads the rows as stored."""
    if not method.startswith("partial"):
        return None
    return binned_topk.strided_layout(rows_per_device, rows_per_device // bin_size)


class AcceleratorIndex(IndexRows):
    """L2-normalised embeddings held sharded on the devices, searched by matmul.

    Same `search(queries, k)` contract as `index.NeighborIndex`: row numbers and
    cosines, best first, equal cosines by row number ascending (exact mode).

    Args:
      embeddings: [N, D] float32 rows (unit norm for cosines).
      num_neighbors: default k.
      dtype: "float32" (scores equal numpy's to float rounding) or "bfloat16"
        (half the memory and twice the matmul rate; cosines move by ~1e-3).
      approx: use `lax.approx_max_k` per device instead of an exact top-k
        (TPUs; elsewhere the search stays exact).
      recall_target: approx_max_k's expected recall of each device's top-k.
      devices: the devices to spread the rows over (default: all).
      memory_bytes: per-device memory (default: what the device reports).
      method: the per-device top-k (`METHODS`; default `search_method` for
        the devices' backend).
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
        method: str | None = None,
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
        backend = devices[0].platform
        if approx and backend != "tpu":
            log.info("search_recall < 1 has no faster form on %s: the search is exact", backend)
            approx = False
        method = method or search_method(
            backend,
            dtype,
            emb.shape[1],
            approx=approx,
            rows_per_device=math.ceil(emb.shape[0] / len(devices)),
            k=num_neighbors,
        )
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
            method=method,
        )
        self.mesh = Mesh(np.array(devices), (ROWS_AXIS,))
        per = self.plan.rows_per_device
        padded = np.zeros((per * len(devices), emb.shape[1]), DTYPES[dtype])
        padded[: emb.shape[0]] = emb
        self._rows = self._put(padded)
        order = stage1_order(method, per, self.plan.bin_size)
        if order is None:
            self._stage1 = self._rows
        else:  # the same rows in each device's strided-bin order
            shards = padded.reshape(len(devices), per, -1)[:, order]
            self._stage1 = self._put(shards.reshape(padded.shape))
        self._replicated = NamedSharding(self.mesh, P())
        self._search = functools.lru_cache(maxsize=8)(self._compile)

    def _put(self, host: np.ndarray) -> jax.Array:
        # Every process holds the whole index; each puts only its devices' rows.
        sharding = NamedSharding(self.mesh, P(ROWS_AXIS, None))
        return jax.make_array_from_callback(host.shape, sharding, functools.partial(_slice, host))

    @property
    def method(self) -> str:
        return self.plan.method

    @property
    def kind(self) -> str:
        return "accelerator_approx" if self.approx else "accelerator_exact"

    def __repr__(self) -> str:
        return (
            f"AcceleratorIndex(kind={self.kind!r}, method={self.method!r}, size={self.size}, "
            f"dim={self.dim}, dtype={self.dtype!r}, devices={self.plan.devices})"
        )

    def save(self, directory: str) -> None:
        """Writes the rows as an exact index (index.NeighborIndex.save): the
        layout on the devices is rebuilt from them when loaded."""
        NeighborIndex(self._embeddings, num_neighbors=self.num_neighbors).save(directory)

    def _compile(self, k: int, method: str | None = None):
        return program_for(
            self.plan,
            self.mesh,
            k=k,
            valid_rows=self.size,
            dtype=self.dtype,
            approx=self.approx,
            recall_target=self.recall_target,
            method=method,
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
        step = 8
        if self.method.startswith("pallas"):
            from gld_jax.retrieval import pallas_bin_max

            step = pallas_bin_max.DEFAULT_TILES.bq
        block = batch_size or min(self.plan.query_block, -(-len(queries) // step) * step)
        search = self._search(k)
        # Every block is dispatched before any result is fetched, so the
        # devices never wait for the host between blocks.
        pending = []
        for start in range(0, len(queries), block):
            q = self._query_block(queries[start : start + block], block)
            pending.append((start, q, search(q, self._stage1, self._rows)))
        out_idx = np.zeros((len(queries), k), np.int64)
        out_val = np.zeros((len(queries), k), np.float32)
        for start, q, result in pending:
            vals, ids, ok = jax.device_get(result)
            if not ok:  # a TPU partial reduction that did not bin as expected
                log.warning("partial reduction failed its check: block searched in one pass")
                vals, ids, _ = jax.device_get(self._search(k, "onepass")(q, self._rows, self._rows))
            n = min(block, len(queries) - start)
            out_idx[start : start + n] = ids[:n]
            out_val[start : start + n] = vals[:n]
        return out_idx, out_val

    def _query_block(self, part: np.ndarray, block: int) -> jax.Array:
        # Whole blocks only: one compiled shape, the last block zero-padded.
        padded = np.zeros((block, self.dim), DTYPES[self.dtype])
        padded[: len(part)] = part
        return jax.make_array_from_callback(
            padded.shape, self._replicated, functools.partial(_slice, padded)
        )


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
            method=search_method(jax.default_backend(), dtype, dim),
        )
    except IndexTooLargeError:
        return "scann"
    return "accelerator"
