"""Turn nearest neighbours into one (landmark, confidence) prediction per query.

Neighbour labels are plain integers; a negative label (e.g. a non-landmark
index image) is treated like any other class, and a negative predicted label
means "no prediction" to :func:`gld_jax.retrieval.submission.write_submission`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["predict_blend", "predict_head", "predict_knn_vote", "predict_top1", "signed_power"]


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


def _class_sums(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[Q, k]`` float64: for column j, the sum of ``weights`` over the columns
    whose label equals column j's. k is small (<= ~100), so the k^2 compare beats
    a per-row bincount."""
    same = labels[:, :, None] == labels[:, None, :]
    return np.einsum("qjl,ql->qj", same, weights, dtype=np.float64)


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
    class_score = _class_sums(labels, sims)
    best = np.argmax(class_score, axis=1)[:, None]  # first column on ties
    return (
        np.take_along_axis(labels, best, 1)[:, 0],
        (np.take_along_axis(class_score, best, 1)[:, 0] / k).astype(np.float32),
    )


def predict_head(head_labels: np.ndarray, head_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The classifier alone: the head's best class and its cosine.

    Args:
      head_labels: ``[Q, k]`` int landmark ids of the head's top-k, best first.
      head_scores: ``[Q, k]`` their cosines.

    Returns:
      ``(labels [Q] int64, confidences [Q] float32)``.
    """
    labels, scores = _check(head_labels, head_scores)
    return labels[:, 0], scores[:, 0]


def signed_power(x: np.ndarray, p: float) -> np.ndarray:
    """``sign(x) |x|^p``: ``x^p`` for odd integer ``p``, and monotone in ``x``
    for any ``p >= 0`` (a re-ranked similarity can be negative)."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.abs(x) ** p


def predict_blend(
    neighbor_labels: np.ndarray,
    neighbor_sims: np.ndarray,
    head_labels: np.ndarray,
    head_scores: np.ndarray,
    *,
    sim_power: float = 9.0,
    head_power: float = 10.0,
    head_floor: float = 1e-8,
) -> tuple[np.ndarray, np.ndarray]:
    """The 3rd-place submission's score: neighbours weighted by the head.

    Every landmark among a query's K neighbours scores
    ``sum over its neighbours j of sim_j^a * head(landmark)^b``, where
    ``head(landmark)`` is the head's cosine to that landmark when it is in the
    head's top-k list and ``head_floor`` otherwise (also the least a listed
    cosine counts). The best landmark wins (the earliest column on ties) and
    its score, as ``score^(1 / (a + b))`` (the same ranking, in a range float32
    and a 6-digit CSV keep apart), is the confidence. Only landmarks among the neighbours can win,
    so a class the index does not hold is never predicted. ``head_power = 0``
    gives the plain top-K ``sum sim^a`` vote.

    Args:
      neighbor_labels: ``[Q, K]`` int landmark of each neighbour.
      neighbor_sims: ``[Q, K]`` similarity of each neighbour (a cosine, or the
        non-landmark re-ranked score; raised by :func:`signed_power`).
      head_labels: ``[Q, k]`` int landmark ids of the head's top-k.
      head_scores: ``[Q, k]`` their cosines.
      sim_power, head_power: the exponents ``a`` and ``b`` (9 and 10 in the
        recipe's notebook).
      head_floor: head value of a landmark outside the head's list.

    Returns:
      ``(labels [Q] int64, confidences [Q] float32)``.
    """
    labels, sims = _check(neighbor_labels, neighbor_sims)
    h_labels, h_scores = _check(head_labels, head_scores)
    if h_labels.shape[0] != labels.shape[0]:
        raise ValueError(f"{h_labels.shape[0]} head lists for {labels.shape[0]} queries")
    if sim_power < 0 or head_power < 0 or head_floor <= 0:
        raise ValueError("sim_power and head_power must be >= 0 and head_floor > 0")
    hit = labels[:, :, None] == h_labels[:, None, :]  # [Q, K, k]
    listed = np.max(np.where(hit, h_scores[:, None, :], -np.inf), axis=2)
    head = np.maximum(np.where(hit.any(axis=2), listed, head_floor), head_floor)
    contribution = signed_power(sims, sim_power) * head.astype(np.float64) ** head_power
    class_score = _class_sums(labels, contribution)
    best = np.argmax(class_score, axis=1)[:, None]
    score = np.take_along_axis(class_score, best, 1)[:, 0]
    if sim_power + head_power > 0:
        score = signed_power(score, 1.0 / (sim_power + head_power))
    return np.take_along_axis(labels, best, 1)[:, 0], score.astype(np.float32)
