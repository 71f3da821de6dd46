"""Turn nearest neighbours into one (landmark, confidence) prediction per query.

Neighbour labels are plain integers; a negative label (e.g. a non-landmark
index image) is treated like any other class, and a negative predicted label
means "no prediction" to :func:`gld_jax.retrieval.submission.write_submission`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["predict_knn_vote", "predict_top1"]


def _check(neighbor_labels: np.ndarray, neighbor_sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(neighbor_labels)
    sims = np.asarray(neighbor_sims, dtype=np.float32)
    if labels.ndim != 2 or labels.shape != sims.shape or labels.shape[1] == 0:
        raise ValueError(
            f"expected neighbor_labels and neighbor_sims of the same shape [Q, k>=1], got "
            f"{labels.shape} and {sims.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"neighbor_labels must be integers, got {labels.dtype}")
    return labels.astype(np.int64), sims


def predict_top1(
    neighbor_labels: np.ndarray, neighbor_sims: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The recipe's baseline: class and cosine of the most similar neighbour.

    Args:
      neighbor_labels: ``[Q, k]`` int class of each neighbour.
      neighbor_sims: ``[Q, k]`` cosine of each neighbour (any column order; the
        most similar is taken, the first column on ties).

    Returns:
      ``(labels [Q] int64, confidences [Q] float32)``.
    """
    labels, sims = _check(neighbor_labels, neighbor_sims)
    best = np.argmax(sims, axis=1)[:, None]
    return np.take_along_axis(labels, best, 1)[:, 0], np.take_along_axis(sims, best, 1)[:, 0]


def predict_knn_vote(
    neighbor_labels: np.ndarray, neighbor_sims: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Similarity-weighted vote over the k neighbours.

    Each class scores the sum of the cosines of its neighbours; the best class
    wins and its confidence is that sum divided by ``k`` (the mean over all k
    slots, so it stays in [-1, 1] and is comparable to a top-1 cosine; a
    constant factor does not change the GAP ranking). Equal sums go to the
    class of the earliest column (the nearer neighbour when sorted).

    Args:
      neighbor_labels: ``[Q, k]`` int class of each neighbour.
      neighbor_sims: ``[Q, k]`` cosine of each neighbour.

    Returns:
      ``(labels [Q] int64, confidences [Q] float32)``.
    """
    labels, sims = _check(neighbor_labels, neighbor_sims)
    k = labels.shape[1]
    # [Q, k, k]: score of column j's class = sum of sims of all columns with that
    # class. k is small (<= ~100), so the k^2 compare beats a per-row bincount.
    same = labels[:, :, None] == labels[:, None, :]
    class_score = np.einsum("qjl,ql->qj", same, sims, dtype=np.float64)
    best = np.argmax(class_score, axis=1)[:, None]  # first column on ties
    return (
        np.take_along_axis(labels, best, 1)[:, 0],
        (np.take_along_axis(class_score, best, 1)[:, 0] / k).astype(np.float32),
    )
