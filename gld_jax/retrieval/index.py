"""Nearest-neighbour index over L2-normalised embeddings (cosine = dot product).

(~420 lines: one index type with its save/load and ScaNN's tuned defaults.)

Small databases are searched exactly with numpy; large ones with a ScaNN tree
(spherical k-means partitions) + asymmetric hashing + exact re-ranking. The
defaults come from a sweep at GLDv2's size (1,580,470 x 512 clustered, 2 cores;
BENCHMARKS.md): sqrt(N) leaves with k-means on ~80 rows per leaf, 8% of the leaves
searched, 4-dimensional AH blocks without anisotropic weighting, 200 rows
re-ordered exactly.

ScaNN pulls in TensorFlow, so it is imported only when a tree index is built.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from typing import Any

import numpy as np

from gld_jax.utils import fs

__all__ = [
    "NeighborIndex",
    "build_scann_index",
    "default_tree_params",
    "exact_search",
    "load_index",
    "row_norms",
]

_META = "index.json"
_EMBEDDINGS = "embeddings.npy"
_SCANN_DIR = "scann"

# Cap on the float32 score block of exact search (2**25 floats = 128 MiB).
_MAX_BLOCK_ELEMENTS = 2**25
_NORM_TOLERANCE = 1e-2


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, dim], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def row_norms(x: np.ndarray) -> np.ndarray:
    """L2 norms ``[N]`` of the rows of ``x`` ``[N, D]``.

    By einsum: ``np.linalg.norm(x, axis=1)`` materialises ``x * x``, a second
    ``[N, D]`` array (9.3 s vs 0.3 s at 1.58M x 512 float32).
    """
    return np.sqrt(np.einsum("ij,ij->i", x, x))


def _top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of each row of ``scores`` [B, N], by score desc then index asc."""
    n = scores.shape[1]
    if k < n:
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        # argpartition picks any of the columns tied at the k-th score: where it
        # left out a lower-numbered one, take the tied columns in column order.
        picked = np.take_along_axis(scores, idx, axis=1)
        kth = picked.min(axis=1)
        tied = (scores == kth[:, None]).sum(axis=1)
        taken = (picked == kth[:, None]).sum(axis=1)
        for r in np.flatnonzero(tied > taken):
            above = np.flatnonzero(scores[r] > kth[r])
            ties = np.flatnonzero(scores[r] == kth[r])[: k - len(above)]
            idx[r] = np.concatenate([above, ties])
    else:
        idx = np.broadcast_to(np.arange(n), scores.shape).copy()
    vals = np.take_along_axis(scores, idx, axis=1)
    order = np.lexsort((idx, -vals), axis=1)  # last key is primary
    return (
        np.take_along_axis(idx, order, axis=1).astype(np.int64),
        np.take_along_axis(vals, order, axis=1),
    )


def exact_search(
    index: np.ndarray, queries: np.ndarray, k: int, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product search in numpy, in query blocks.

    Args:
      index: ``[N, D]`` database embeddings (L2-normalised for cosine).
      queries: ``[Q, D]`` query embeddings.
      k: neighbours per query; clamped to ``N``.
      batch_size: most queries scored at once (further capped so one block of
        scores stays under 128 MiB).

    Returns:
      ``(indices [Q, k] int64, scores [Q, k] float32)``, best first; equal
      scores are ordered by index, ascending.
    """
    index = _as_matrix(index, "index")
    queries = _as_matrix(queries, "queries")
    if index.shape[1] != queries.shape[1]:
        raise ValueError(f"dim mismatch: index {index.shape[1]}, queries {queries.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = index.shape[0]
    k = min(k, n)
    out_idx = np.zeros((queries.shape[0], k), np.int64)
    out_val = np.zeros((queries.shape[0], k), np.float32)
    if n == 0:
        return out_idx, out_val
    step = max(1, min(batch_size, _MAX_BLOCK_ELEMENTS // n))
    for start in range(0, queries.shape[0], step):
        scores = queries[start : start + step] @ index.T
        out_idx[start : start + step], out_val[start : start + step] = _top_k_rows(scores, k)
    return out_idx, out_val


# Measured at 1,580,470 x 512 (noise 0.5, 1,257 leaves, 1,000 sampled queries): top-1
# recall 0.988 / 0.992 / 0.994 / 0.997 searching 5 / 6.4 / 8 / 9.5% of the leaves.
_SEARCH_FRACTION = 0.08
# k-means rows per leaf: 80 (100k rows at GLDv2 size) gave the same recall as 200
# with a third of the k-means time; 40 lost 2-3 points of recall.
_TRAINING_ROWS_PER_LEAF = 80
# AH over 4-dim blocks (4-bit codes: 64 bytes per 512-d row, half of 2-dim blocks)
# scans 1.8x faster; plain (not anisotropic) quantization builds in 60% of the time.
# Neither lowered recall at 1.58M once 200 candidates are re-ordered exactly.
AH_DIMS_PER_BLOCK = 4
_AH_CODES = 16  # ScaNN's default 16 clusters (4-bit codes) per AH block


def _default_leaves_to_search(num_leaves: int) -> int:
    return min(num_leaves, max(10, math.ceil(_SEARCH_FRACTION * num_leaves)))


def default_tree_params(num_points: int, num_neighbors: int = 10) -> dict[str, int]:
    """ScaNN tree settings chosen from the database size.

    * ``num_leaves = round(sqrt(N))``: ~sqrt(N) points per leaf, the usual
      balance of centroid scoring vs leaf scanning (at 1.58M, 700 and 2,000
      leaves both gave lower recall for the same search time than 1,257).
    * ``leaves_to_search = max(10, ceil(8% of leaves))``: top-1 recall 0.994 at
      1,580,470 x 512 (101 of 1,257 leaves). 20k x 64 clustered (tests): 12 of
      141 leaves.
    * ``training_sample_size = min(N, 80 * num_leaves)``: ~80 rows per k-means
      centre (100,560 at GLDv2 size).
    * ``reorder = max(200, num_neighbors)``: AH candidates re-scored exactly.
    """
    num_leaves = max(1, round(math.sqrt(num_points)))
    return {
        "num_leaves": num_leaves,
        "leaves_to_search": _default_leaves_to_search(num_leaves),
        "training_sample_size": min(num_points, _TRAINING_ROWS_PER_LEAF * num_leaves),
        "reorder": max(200, num_neighbors),
    }


class IndexRows:
    """The database rows a searcher answers for: ``embeddings`` ``[N, D]`` float32,
    ``size`` N and ``dim`` D."""

    _embeddings: np.ndarray

    @property
    def embeddings(self) -> np.ndarray:
        """``[N, D]`` float32 database rows (the index's own reference)."""
        return self._embeddings

    @property
    def size(self) -> int:
        return int(self._embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self._embeddings.shape[1])


class NeighborIndex(IndexRows):
    """A searchable set of L2-normalised embeddings (exact or ScaNN tree).

    Build with :func:`build_scann_index`. ``kind`` is ``"brute_force"`` (exact,
    numpy) or ``"tree_ah"`` (ScaNN). ``size`` is the number of database rows.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        *,
        num_neighbors: int,
        searcher: Any = None,
        leaves_to_search: int | None = None,
        reorder: int | None = None,
    ) -> None:
        self._embeddings = embeddings
        self._searcher = searcher
        self.num_neighbors = num_neighbors
        self.leaves_to_search = leaves_to_search
        self.reorder = reorder

    @property
    def kind(self) -> str:
        return "brute_force" if self._searcher is None else "tree_ah"

    def __repr__(self) -> str:
        return f"NeighborIndex(kind={self.kind!r}, size={self.size}, dim={self.dim})"

    def save(self, directory: str) -> None:
        """Writes the index to ``directory`` (``index.json``, ``embeddings.npy``
        and, for a tree, ScaNN's serialized assets in ``scann/``); read it back
        with :func:`load_index`. The metadata file is written last, so a
        directory without it is an unfinished save."""
        fs.makedirs(directory)
        meta_path = os.path.join(directory, _META)
        fs.remove(meta_path)
        buf = io.BytesIO()
        np.save(buf, self._embeddings)
        with fs.open_file(os.path.join(directory, _EMBEDDINGS), "wb") as f:
            f.write(buf.getvalue())
        if self._searcher is not None:
            scann_dir = os.path.join(directory, _SCANN_DIR)
            # Relative asset paths: the folder can be moved or copied and still load.
            if fs.is_remote(scann_dir):  # ScaNN serialises to a local folder only
                with tempfile.TemporaryDirectory(prefix="gldjax-scann-") as local:
                    self._searcher.serialize(local, relative_path=True)
                    fs.rmtree(scann_dir)
                    fs.copy_tree(local, scann_dir)
            else:
                os.makedirs(scann_dir, exist_ok=True)
                self._searcher.serialize(scann_dir, relative_path=True)
        meta = {
            "kind": self.kind,
            "size": self.size,
            "dim": self.dim,
            "num_neighbors": self.num_neighbors,
            "leaves_to_search": self.leaves_to_search,
            "reorder": self.reorder,
        }
        fs.write_atomic(meta_path, json.dumps(meta, indent=1))

    def search(
        self, queries: np.ndarray, k: int | None = None, batch_size: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest database rows of each query by cosine (dot product).

        Args:
          queries: ``[Q, D]`` L2-normalised query embeddings.
          k: neighbours per query (default: ``num_neighbors`` of the build);
            clamped to ``size``.
          batch_size: queries per call into the searcher (bounds memory).

        Returns:
          ``(indices [Q, k] int64, cosines [Q, k] float32)``, best first. Every
          entry is a real database row: where the tree finds fewer than ``k``
          candidates in the searched leaves, that query is answered exactly.
        """
        k = self.num_neighbors if k is None else k
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self._searcher is None:
            return exact_search(self._embeddings, queries, k, batch_size)
        queries = _as_matrix(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(f"dim mismatch: index {self.dim}, queries {queries.shape[1]}")
        k = min(k, self.size)
        out_idx = np.zeros((queries.shape[0], k), np.int64)
        out_val = np.zeros((queries.shape[0], k), np.float32)
        for start in range(0, queries.shape[0], batch_size):
            block = queries[start : start + batch_size]
            idx, val = self._searcher.search_batched_parallel(
                block,
                final_num_neighbors=k,
                pre_reorder_num_neighbors=max(self.reorder or 0, k),
                leaves_to_search=self.leaves_to_search,
            )
            idx, val = np.asarray(idx, np.int64), np.asarray(val, np.float32)
            # ScaNN pads short result lists with index 0 and NaN score.
            short = np.isnan(val).any(axis=1)
            if short.any():
                idx[short], val[short] = exact_search(self._embeddings, block[short], k)
            out_idx[start : start + len(block)] = idx
            out_val[start : start + len(block)] = val
        return out_idx, out_val


def unit_rows(embeddings: np.ndarray, num_neighbors: int) -> np.ndarray:
    """float32 [N, D] rows, checked: non-empty, finite, of unit norm (to 1e-2)."""
    emb = _as_matrix(embeddings, "embeddings")
    if emb.shape[0] == 0:
        raise ValueError("embeddings is empty: nothing to index")
    if num_neighbors < 1:
        raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}")
    worst = float(np.max(np.abs(row_norms(emb) - 1.0)))
    if worst > _NORM_TOLERANCE:
        raise ValueError(f"embeddings must be L2-normalised (max | |x| - 1 | = {worst:.3g})")
    return emb


def build_scann_index(
    embeddings: np.ndarray,
    *,
    num_neighbors: int = 10,
    brute_force_threshold: int = 20_000,
    num_leaves: int | None = None,
    leaves_to_search: int | None = None,
    reorder: int | None = None,
    training_sample_size: int | None = None,
) -> NeighborIndex:
    """Index L2-normalised embeddings for cosine nearest-neighbour search.

    Below ``brute_force_threshold`` rows the index is exact (numpy). From the
    threshold up it is a ScaNN ``tree(spherical=True)`` +
    ``score_ah(AH_DIMS_PER_BLOCK)`` + ``reorder`` over dot products; unset tree
    parameters come from :func:`default_tree_params`.

    Args:
      embeddings: ``[N, D]`` float32, rows of unit L2 norm (checked to 1e-2:
        the spherical tree and "cosine" scores assume it).
      num_neighbors: default ``k`` of :meth:`NeighborIndex.search`.
      brute_force_threshold: smallest N that gets a ScaNN tree.
      num_leaves, leaves_to_search, reorder, training_sample_size: ScaNN tree
        overrides (``reorder`` = candidates re-scored exactly).

    Returns:
      A :class:`NeighborIndex` (it keeps a reference to ``embeddings``).

    Raises:
      ValueError: not 2-D, empty, non-finite, not normalised, bad parameters.
    """
    emb = unit_rows(embeddings, num_neighbors)
    n = emb.shape[0]
    if n < brute_force_threshold:
        return NeighborIndex(emb, num_neighbors=num_neighbors)
    if n < _AH_CODES:
        raise ValueError(
            f"a ScaNN tree needs at least {_AH_CODES} index rows (its hashing learns "
            f"{_AH_CODES} codes per block), got {n}: search them exactly with a "
            f"brute-force threshold above {n}"
        )

    params = default_tree_params(n, num_neighbors)
    for key, value in (
        ("num_leaves", num_leaves),
        ("leaves_to_search", leaves_to_search),
        ("reorder", reorder),
        ("training_sample_size", training_sample_size),
    ):
        if value is not None:
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
            params[key] = value
    if num_leaves is not None and leaves_to_search is None:
        params["leaves_to_search"] = _default_leaves_to_search(num_leaves)
    params["num_leaves"] = min(params["num_leaves"], n)
    params["leaves_to_search"] = min(params["leaves_to_search"], params["num_leaves"])
    params["training_sample_size"] = min(params["training_sample_size"], n)

    import scann  # lazy: pulls in TensorFlow

    searcher = (
        scann.scann_ops_pybind.builder(emb, num_neighbors, "dot_product")
        .tree(
            num_leaves=params["num_leaves"],
            num_leaves_to_search=params["leaves_to_search"],
            training_sample_size=params["training_sample_size"],
            spherical=True,
        )
        .score_ah(AH_DIMS_PER_BLOCK)
        .reorder(params["reorder"])
        .build()
    )
    return NeighborIndex(
        emb,
        num_neighbors=num_neighbors,
        searcher=searcher,
        leaves_to_search=params["leaves_to_search"],
        reorder=params["reorder"],
    )


def load_index(
    directory: str, *, leaves_to_search: int | None = None, reorder: int | None = None
) -> NeighborIndex:
    """Reads an index written by :meth:`NeighborIndex.save`.

    Args:
      directory: the folder given to ``save``.
      leaves_to_search, reorder: search-time overrides for a tree index.

    Raises:
      FileNotFoundError: no finished index in ``directory``.
      ValueError: the stored embeddings do not match the metadata.
    """
    meta_path = os.path.join(directory, _META)
    if not fs.exists(meta_path):
        raise FileNotFoundError(f"no saved index in {directory!r} (missing {_META})")
    meta = json.loads(fs.read_text(meta_path))
    with fs.open_file(os.path.join(directory, _EMBEDDINGS), "rb") as f:
        emb = np.load(io.BytesIO(f.read()), allow_pickle=False)
    if emb.shape != (meta["size"], meta["dim"]):
        raise ValueError(f"{directory}: embeddings {emb.shape} do not match the metadata")
    searcher = None
    if meta["kind"] == "tree_ah":
        import scann  # lazy: pulls in TensorFlow

        scann_dir = os.path.join(directory, _SCANN_DIR)
        if fs.is_remote(scann_dir):  # ScaNN reads a local folder only
            with tempfile.TemporaryDirectory(prefix="gldjax-scann-") as local:
                fs.copy_tree(scann_dir, local)
                searcher = scann.scann_ops_pybind.load_searcher(local)
        else:
            searcher = scann.scann_ops_pybind.load_searcher(scann_dir)
    return NeighborIndex(
        emb,
        num_neighbors=meta["num_neighbors"],
        searcher=searcher,
        leaves_to_search=leaves_to_search or meta["leaves_to_search"],
        reorder=reorder or meta["reorder"],
    )
