"""Non-landmark re-ranking (1st place, GLR2020; Henkel & Singer, arXiv 2010.01650).

Most GLDv2 test images show no landmark, and a confident top-1 on one of them
costs precision for every correct prediction ranked below it. Images that look
like the "junk" of a known non-landmark set are pushed down:

    score(q, x) = clamp(cos(q, x), 0, 1) - B(x) - C(q)

with ``B(x)`` / ``C(q)`` the mean cosine of index image ``x`` / query ``q`` to
its ``k`` nearest images of the non-landmark set. ``B`` re-orders a query's
neighbours (index images that resemble junk lose), ``C`` lowers the confidence
of the whole query (queries that resemble junk sink in the global ranking).
"""

from __future__ import annotations

import numpy as np

from gld_jax.retrieval.index import NeighborIndex

__all__ = ["nonlandmark_similarity", "predict_nonlandmark_rerank", "rescored_neighbors"]


def nonlandmark_similarity(
    nonlandmark_index: NeighborIndex,
    embeddings: np.ndarray,
    k: int,
    *,
    ids: np.ndarray | None = None,
    nonlandmark_ids: np.ndarray | None = None,
    batch_size: int = 4096,
) -> np.ndarray:
    """Mean cosine of each row to its ``k`` nearest non-landmark images.

    Args:
      nonlandmark_index: index over the non-landmark set's ``[M, D]`` embeddings.
      embeddings: ``[N, D]`` L2-normalised rows to score.
      k: non-landmark neighbours averaged (clamped to ``M``; a row whose own
        image is excluded averages the ``min(k, M - 1)`` others).
      ids, nonlandmark_ids: ``[N]`` / ``[M]`` image ids; when both are given a
        row never counts its own image (a query that is also in the
        non-landmark set would otherwise score 1 against itself).
      batch_size: rows searched at once.

    Returns:
      ``[N]`` float32 mean cosines (0 where no other non-landmark image exists).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, m = len(embeddings), nonlandmark_index.size
    k = min(k, m)
    if n == 0 or k < 1:
        return np.zeros(n, np.float32)
    exclude_self = ids is not None and nonlandmark_ids is not None
    search_k = min(k + 1, m) if exclude_self else k
    idx, sims = nonlandmark_index.search(np.asarray(embeddings, np.float32), search_k, batch_size)
    if exclude_self:
        own = np.asarray(nonlandmark_ids)[idx] == np.asarray(ids)[:, None]
        # The first k columns that are not the row's own image (fewer if the set is that small).
        keep = ~own & (np.cumsum(~own, axis=1) <= k)
        count = np.maximum(keep.sum(axis=1), 1)
        return (np.where(keep, sims, 0.0).sum(axis=1) / count).astype(np.float32)
    return sims.mean(axis=1).astype(np.float32)


def rescored_neighbors(neighbor_sims: np.ndarray, neighbor_penalty: np.ndarray) -> np.ndarray:
    """``[Q, k]`` float32 ``clamp(sim, 0, 1) - B`` of each neighbour (before C)."""
    return np.clip(np.asarray(neighbor_sims, np.float32), 0.0, 1.0) - np.asarray(
        neighbor_penalty, np.float32
    )


def predict_nonlandmark_rerank(
    neighbor_labels: np.ndarray,
    neighbor_sims: np.ndarray,
    neighbor_penalty: np.ndarray,
    query_penalty: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Class and confidence from re-scored neighbours.

    Each neighbour ``j`` of query ``q`` scores ``clamp(sim_qj, 0, 1) - B_j``;
    the best-scoring neighbour (first column on ties) gives the class, and its
    score minus ``C_q`` is the confidence.

    Args:
      neighbor_labels: ``[Q, k]`` int class of each neighbour.
      neighbor_sims: ``[Q, k]`` cosine query-neighbour.
      neighbor_penalty: ``[Q, k]`` B of each neighbour (its mean cosine to the
        non-landmark set).
      query_penalty: ``[Q]`` C of each query.

    Returns:
      ``(labels [Q] int64, confidences [Q] float32)``; confidences lie in [-2, 1].
    """
    labels = np.asarray(neighbor_labels)
    sims = np.asarray(neighbor_sims, np.float32)
    b = np.asarray(neighbor_penalty, np.float32)
    c = np.asarray(query_penalty, np.float32)
    if (
        labels.ndim != 2
        or labels.shape != sims.shape
        or b.shape != sims.shape
        or labels.shape[1] == 0
    ):
        raise ValueError(
            f"expected labels, sims, penalties of one shape [Q, k>=1], got {labels.shape}, "
            f"{sims.shape}, {b.shape}"
        )
    if c.shape != (labels.shape[0],):
        raise ValueError(f"query_penalty must be [Q]={labels.shape[0]}, got {c.shape}")
    score = rescored_neighbors(sims, b)
    best = np.argmax(score, axis=1)[:, None]
    return (
        np.take_along_axis(labels, best, 1)[:, 0].astype(np.int64),
        (np.take_along_axis(score, best, 1)[:, 0] - c).astype(np.float32),
    )
