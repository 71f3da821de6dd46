"""Stage 1 of the binned exact search on GPUs, fused: a Pallas (Triton) kernel
that multiplies a tile of queries by a tile of rows and writes only each bin's
maximum, so the `[B, R]` scores never reach HBM.

Each program computes `[bq, bn]` float32 dot products of `bq` queries and `bn`
consecutive rows (the inner dimension in chunks of `bk`), masks rows past the
shard's valid count, and stores the `[bq, bn / G]` maxima of consecutive bins
of `G` rows: the output `gld_jax.retrieval.binned_topk.rescore_bins` reads.
HBM traffic is the queries and rows (re-read per tile, mostly from L2) plus
`B x R / G` floats, against the `B x R` floats a plain matmul writes and a
top-k or reduction reads back.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

__all__ = ["DEFAULT_TILES", "KernelTiles", "bin_max_pallas", "pallas_supported", "tiles_for"]


@dataclasses.dataclass(frozen=True)
class KernelTiles:
    """Tile sizes and launch shape (powers of two, as Triton needs)."""

    bq: int = 128  # queries per program
    bn: int = 128  # rows per program (a multiple of the bin size)
    bk: int = 64  # inner-dimension chunk
    num_warps: int = 8
    num_stages: int = 3


# The tiles the search uses: the fastest of four on an H200 at GLDv2 size, 512
# dims (0.464 s against 0.478 s for 128 x 128 tiles, 0.483 s for 256 x 128,
# 0.577 s for 64 x 128 with 4 warps; BENCHMARKS.md, "Exact search").
DEFAULT_TILES = KernelTiles(bq=128, bn=256, bk=64, num_warps=8, num_stages=3)


def tiles_for(dim: int, tiles: KernelTiles | None = None) -> KernelTiles:
    """`tiles` (default DEFAULT_TILES) with an inner chunk that divides `dim`
    (64, else 32 or 16: a Triton dot needs at least 16)."""
    tiles = tiles or DEFAULT_TILES
    bk = next(c for c in (tiles.bk, 32, 16, 0) if c == 0 or dim % c == 0)
    return dataclasses.replace(tiles, bk=bk)


def pallas_supported(dim: int, dtype) -> bool:
    """Whether the kernel takes this problem: bfloat16 operands (Triton's f32
    dot would run in TF32, below the search's float32 precision) and an inner
    dimension that splits into chunks of 16 or more."""
    return jnp.dtype(dtype) == jnp.bfloat16 and tiles_for(dim).bk > 0


def _kernel(q_ref, x_ref, n_ref, o_ref, *, tiles: KernelTiles, bin_size: int, dim: int):
    from jax.experimental import pallas as pl

    i, j = pl.program_id(0), pl.program_id(1)
    bq, bn, bk = tiles.bq, tiles.bn, tiles.bk

    def chunk(c, acc):
        qt = q_ref[pl.ds(i * bq, bq), pl.ds(c * bk, bk)]
        xt = x_ref[pl.ds(j * bn, bn), pl.ds(c * bk, bk)]
        return acc + jax.lax.dot_general(
            qt, xt, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
        )

    acc = jax.lax.fori_loop(0, dim // bk, chunk, jnp.zeros((bq, bn), jnp.float32))
    row = j * bn + jax.lax.broadcasted_iota(jnp.int32, (bq, bn), 1)
    acc = jnp.where(row < n_ref[0], acc, -jnp.inf)  # rows past the shard's end
    nb = bn // bin_size
    o_ref[pl.ds(i * bq, bq), pl.ds(j * nb, nb)] = acc.reshape(bq, nb, bin_size).max(axis=-1)


def bin_max_pallas(
    q: jax.Array,
    rows: jax.Array,
    valid_local: jax.Array,
    *,
    bin_size: int,
    tiles: KernelTiles | None = None,
    interpret: bool = False,
) -> jax.Array:
    """`[B, R / G]` float32 maxima of consecutive bins of `G` rows.

    Args:
      q: [B, D] bfloat16 queries, B a multiple of `tiles.bq`.
      rows: [R, D] bfloat16 rows, R a multiple of `tiles.bn`.
      valid_local: [1] int32, rows of this shard that are not padding.
      bin_size: G, dividing `tiles.bn`.
      tiles: tile sizes (default DEFAULT_TILES).
      interpret: run the kernel in Pallas' interpreter (any backend; tests).
    """
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    b, dim = q.shape
    n = rows.shape[0]
    tiles = tiles_for(dim, tiles)
    if not tiles.bk or b % tiles.bq or n % tiles.bn or tiles.bn % bin_size or dim % tiles.bk:
        raise ValueError(
            f"bin_max_pallas: shapes q {q.shape}, rows {rows.shape}, bin {bin_size} "
            f"do not tile by {tiles}"
        )
    return pl.pallas_call(
        functools.partial(_kernel, tiles=tiles, bin_size=bin_size, dim=dim),
        out_shape=jax.ShapeDtypeStruct((b, n // bin_size), jnp.float32),
        grid=(b // tiles.bq, n // tiles.bn),
        compiler_params=plgpu.CompilerParams(
            num_warps=tiles.num_warps, num_stages=tiles.num_stages
        ),
        interpret=interpret,
        name="bin_max",
    )(q, rows, valid_local)
