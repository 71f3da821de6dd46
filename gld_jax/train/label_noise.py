"""Label clean-up with a trained Sub-center head (Sub-center ArcFace, sec. 3.2).

After training with K sub-centres per class, most clean images of a class sit
near one dominant sub-centre; noisy ones (wrong label, no landmark) sit far from
it. Images whose angle to their class's dominant sub-centre exceeds a threshold
(75 degrees in the paper) are listed, and can be dropped before retraining.
Pure numpy: the embedding is done by the caller.
"""

from __future__ import annotations

import numpy as np


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def dominant_subcenters(
    embeddings: np.ndarray, centers: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Per class, the sub-centre nearest to most of the class's images.

    Args:
      embeddings: [N, D] image embeddings.
      centers: [C, K, D] head weights.
      labels: [N] class index in [0, C).
    Returns:
      [C] int index in [0, K); classes without images get 0.
    """
    cos = np.einsum("nd,nkd->nk", _normalize(embeddings), _normalize(centers[labels]))
    nearest = np.argmax(cos, axis=1)
    votes = np.zeros((centers.shape[0], centers.shape[1]), np.int64)
    np.add.at(votes, (labels, nearest), 1)
    return np.argmax(votes, axis=1)


def angles_to_dominant(
    embeddings: np.ndarray, centers: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """[N] angle in degrees between each image and its class's dominant sub-centre."""
    dominant = dominant_subcenters(embeddings, centers, labels)
    target = _normalize(centers[labels, dominant[labels]])
    cos = np.clip(np.sum(_normalize(embeddings) * target, axis=-1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def select_noisy(
    angles: np.ndarray, labels: np.ndarray, threshold: float, min_per_class: int = 0
) -> np.ndarray:
    """[N] bool: images above `threshold` degrees, except that each class keeps
    its `min_per_class` closest images (a threshold set on large pretrained
    models can otherwise empty a small class entirely)."""
    noisy = angles > threshold
    if min_per_class <= 0:
        return noisy
    order = np.lexsort((angles, labels))  # by class, then by angle
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.arange(len(order)) - starts  # 0 = the class's closest image
    keep = np.zeros(len(angles), bool)
    keep[order[rank < min_per_class]] = True
    return noisy & ~keep
