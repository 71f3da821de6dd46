"""Exact top-k of query-row dot products without a full-width top-k.

One device's rows are cut into bins of `G` consecutive rows. Stage 1 scores
every row and keeps only each bin's maximum (`[B, R / G]`); stage 2 takes the
k bins with the highest maxima, gathers their k x G rows, rescores them and
takes the top k. It is exact: every row of the true top k lies in one of those
k bins, since a bin outside them has a maximum no higher than k other bins'
maxima, each of which is a row's score. Ties keep the rule of the one-pass
search (equal scores by row number ascending) because bins are ranked by
maximum and then by bin number, which orders their rows, and the candidates
are gathered in bin order.

What makes it fast is stage 1's output: `G` times smaller than the score
matrix that a one-pass top-k writes and sorts. How stage 1 computes the
maxima is the backend's business (`bin_max_*` below, and the fused kernel of
`gld_jax.retrieval.pallas_bin_max` on GPUs); stage 2 is shared. Stage 2
recomputes the candidates' scores with the same operands and precision, so the
returned scores are those of a plain matmul up to float rounding of the
accumulation order (about 1e-6 of a cosine), never the bins' maxima.

TPUs: XLA:TPU fuses `lax.approx_max_k(..., aggregate_to_topk=False)` into the
matmul, but its bins are strided (column c goes to bin c mod L) rather than
consecutive. `strided_layout` permutes the rows a device stores for stage 1 so
that its strided bins hold consecutive original rows; stage 2 reads the
original order. Each block checks that every returned maximum came from the
bin it was reported for; a block that fails the check is searched again by the
one-pass program, so the result is exact whatever the bins turn out to be.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "bin_max_approx_partial",
    "bin_max_emulated_partial",
    "bin_max_xla",
    "bin_size_for",
    "partial_k",
    "partial_recall",
    "rescore_bins",
    "select_columns",
    "strided_layout",
]

# Rows per bin. Stage 1 writes R / G maxima per query; stage 2 reads k x G rows
# of D per query. 32 keeps both small at 512 to 4,608 dimensions: at GLDv2's
# 1.58M rows and 3,072 dims, 5 x 16 rows per query is 58 GB over the whole
# test set, against 3.7 TB of full f32 scores.
DEFAULT_BIN = 16


def bin_size_for(rows_per_device: int, bin_size: int = DEFAULT_BIN) -> int:
    """The bin size for a shard: `bin_size`, or the largest power of two that
    leaves at least two bins in a small shard (tests, tiny indexes)."""
    g = bin_size
    while g > 1 and 2 * g > rows_per_device:
        g //= 2
    return g


def _scores(q: jax.Array, rows: jax.Array, precision) -> jax.Array:
    """[B, R] float32 dot products."""
    return jnp.einsum("qd,nd->qn", q, rows, preferred_element_type=jnp.float32, precision=precision)


def mask_padding(scores: jax.Array, row_ids: jax.Array, valid_rows: int) -> jax.Array:
    """-inf where the global row id is padding (>= valid_rows)."""
    return jnp.where(row_ids < valid_rows, scores, -jnp.inf)


def bin_max_xla(
    q: jax.Array, rows: jax.Array, *, bin_size: int, first_row, valid_rows: int, precision
) -> jax.Array:
    """Stage 1 in plain XLA: `[B, R / G]` maxima of consecutive bins. The full
    scores are still formed (XLA:GPU and XLA:CPU do not fuse a reduction into a
    matmul), but only the maxima reach the top-k."""
    n = rows.shape[0]
    s = mask_padding(_scores(q, rows, precision), first_row + jnp.arange(n)[None], valid_rows)
    return s.reshape(q.shape[0], n // bin_size, bin_size).max(axis=-1)


def strided_layout(num_rows: int, num_bins: int) -> np.ndarray:
    """The row order a device stores for strided bins: position `j * L + l`
    holds original row `l * G + j` (L = num_bins, G = num_rows / L), so the
    strided bin l (positions l, l + L, ...) holds original rows [l G, (l+1) G).

    Returns:
      [num_rows] int64: the original row at each stored position.
    """
    if num_rows % num_bins:
        raise ValueError(f"{num_rows} rows do not split into {num_bins} strided bins")
    g = num_rows // num_bins
    return np.arange(num_rows).reshape(num_bins, g).T.reshape(-1)


def _original_rows(num_rows: int, num_bins: int) -> jax.Array:
    """[1, num_rows] the original row of each stored position of
    `strided_layout`, from an iota (so XLA fuses it, unlike a constant table)."""
    c = jax.lax.broadcasted_iota(jnp.int32, (1, num_rows), 1)
    return (c % num_bins) * (num_rows // num_bins) + c // num_bins


def partial_bins(num_rows: int, k: int, recall_target: float) -> int:
    """L, the number of strided bins `lax.approx_max_k(..., aggregate_to_topk=False)`
    reduces `num_rows` columns to (its output width)."""
    shape = jax.ShapeDtypeStruct((8, num_rows), jnp.float32)
    out = jax.eval_shape(
        lambda s: jax.lax.approx_max_k(s, k, recall_target=recall_target, aggregate_to_topk=False),
        shape,
    )
    return out[0].shape[1]


def partial_k(k: int) -> int:
    """The k the partial reduction is asked for: XLA reduces nothing for k = 1,
    while the bins it makes for k = 2 serve a top-1 as well."""
    return max(k, 2)


def partial_recall(num_rows: int, k: int, num_bins: int) -> float | None:
    """A recall target for which `approx_max_k(..., aggregate_to_topk=False)`
    reduces `num_rows` columns to exactly `num_bins` strided bins, or None.
    XLA derives the reduction from recall and k; more bins need a higher
    recall, so the target is found by bisection."""
    lo, hi = 0.5, 1.0 - 1e-9
    for _ in range(60):
        mid = (lo + hi) / 2
        width = partial_bins(num_rows, k, mid)
        if width == num_bins:
            return mid
        lo, hi = (mid, hi) if width < num_bins else (lo, mid)
    return None


def bin_max_approx_partial(
    q: jax.Array,
    stored: jax.Array,
    *,
    k: int,
    recall_target: float,
    first_row,
    valid_rows: int,
    precision,
) -> tuple[jax.Array, jax.Array]:
    """Stage 1 on a TPU: the matmul with XLA:TPU's fused partial reduction.

    Args:
      stored: [R, D] rows in `strided_layout(R, L)` order.

    Returns:
      (maxima [B, L] of the consecutive original bins, ok: a bool scalar, True
      when every maximum was reported for the strided bin it lies in).
    """
    n = stored.shape[0]
    k = partial_k(k)
    num_bins = partial_bins(n, k, recall_target)
    s = mask_padding(
        _scores(q, stored, precision), first_row + _original_rows(n, num_bins), valid_rows
    )
    maxima, at = jax.lax.approx_max_k(s, k, recall_target=recall_target, aggregate_to_topk=False)
    ok = jnp.all(at % num_bins == jnp.arange(num_bins)[None])
    return maxima, ok


def bin_max_emulated_partial(
    q: jax.Array, stored: jax.Array, *, num_bins: int, first_row, valid_rows: int, precision
) -> tuple[jax.Array, jax.Array]:
    """`bin_max_approx_partial` with the strided partial reduction written out
    in XLA (max over positions l, l + L, ...): the TPU path's layout and
    rescoring, tested on any backend."""
    n = stored.shape[0]
    s = mask_padding(
        _scores(q, stored, precision), first_row + _original_rows(n, num_bins), valid_rows
    )
    return s.reshape(q.shape[0], n // num_bins, num_bins).max(axis=1), jnp.bool_(True)


def rescore_bins(
    q: jax.Array,
    rows: jax.Array,
    maxima: jax.Array,
    *,
    k: int,
    bin_size: int,
    first_row,
    valid_rows: int,
    precision,
) -> tuple[jax.Array, jax.Array]:
    """Stage 2: the exact top k among the rows of the k best bins.

    Args:
      q: [B, D] queries.
      rows: [R, D] this device's rows in their original order (R = bins x G).
      maxima: [B, R / G] each bin's highest score (stage 1).
      first_row: the global id of `rows[0]`; ids >= valid_rows are padding.

    Returns:
      (scores [B, k] float32, global row ids [B, k] int32), best first, equal
      scores by row id ascending.
    """
    b, num_bins = maxima.shape
    kb = min(k, num_bins)
    _, bins = jax.lax.top_k(maxima, kb)
    bins = jnp.sort(bins, axis=1)  # candidates in row order: ties by row id
    slabs = rows.reshape(num_bins, bin_size, rows.shape[1])[bins]  # [B, kb, G, D]
    s = _rescore(q, slabs.reshape(b, kb * bin_size, -1), precision)
    ids = first_row + (bins[:, :, None] * bin_size + jnp.arange(bin_size)).reshape(b, -1)
    vals, at = jax.lax.top_k(mask_padding(s, ids, valid_rows), min(k, kb * bin_size))
    return vals, select_columns(ids, at).astype(jnp.int32)


def _rescore(q: jax.Array, cand: jax.Array, precision) -> jax.Array:
    """[B, C] float32 dot products of each query with its own candidates
    `cand` [B, C, D], as a batched matmul: the query is repeated to 8 rows so
    that XLA:TPU runs it on the matrix unit from the gathered bfloat16 rows,
    instead of first copying them to float32 for an elementwise product."""
    b, d = q.shape
    q8 = jnp.broadcast_to(q[:, None, :], (b, 8, d))
    out = jax.lax.dot_general(
        q8,
        cand,
        (((2,), (2,)), ((0,), (0,))),
        preferred_element_type=jnp.float32,
        precision=precision,
    )
    return out[:, 0]


def select_columns(values: jax.Array, at: jax.Array) -> jax.Array:
    """`take_along_axis(values, at, 1)` for small [B, C] and [B, k], as a
    one-hot sum: XLA:TPU lowers the gather to far more traffic than this."""
    onehot = at[:, :, None] == jnp.arange(values.shape[1])[None, None, :]
    return jnp.sum(jnp.where(onehot, values[:, None, :], 0), axis=-1)


def padded_rows(rows: int, devices: int, bin_size: int, multiple: int = 1) -> int:
    """Rows per device: at least ceil(rows / devices), a multiple of the bin
    size and of `multiple` (the TPU's strided bins need whole reductions)."""
    step = math.lcm(bin_size, multiple)
    return max(step, -(-math.ceil(rows / devices) // step) * step)
