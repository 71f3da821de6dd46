"""Landmark recognition by retrieval: nearest labelled images vote for a class."""

from __future__ import annotations

import numpy as np

from gld_jax.retrieval.embeddings import EmbeddingSet
from gld_jax.retrieval.index import build_scann_index
from gld_jax.retrieval.predict import predict_knn_vote, predict_top1

PREDICTORS = {"top1": predict_top1, "knn_vote": predict_knn_vote}


def recognize(
    index: EmbeddingSet,
    queries: EmbeddingSet,
    *,
    mode: str = "top1",
    num_neighbors: int = 5,
    brute_force_threshold: int = 20_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted landmark id and confidence per query.

    Args:
      index: labelled embeddings (rows with label -1 are ignored).
      queries: embeddings to label, [Q, D].
      mode: "top1" (class and cosine of the nearest image, the recipe's baseline)
        or "knn_vote" (similarity-weighted vote over the top `num_neighbors`).
    Returns:
      (landmark ids [Q] int64, confidences [Q] float32).
    """
    if mode not in PREDICTORS:
        raise ValueError(f"unknown prediction mode {mode!r}; known: {sorted(PREDICTORS)}")
    labelled = index.select(index.labels >= 0)
    if len(labelled) == 0 or len(queries) == 0:
        return np.full(len(queries), -1, np.int64), np.zeros(len(queries), np.float32)
    searcher = build_scann_index(
        np.asarray(labelled.embeddings, np.float32),
        num_neighbors=num_neighbors,
        brute_force_threshold=brute_force_threshold,
    )
    nn_idx, nn_sims = searcher.search(np.asarray(queries.embeddings, np.float32), num_neighbors)
    labels, conf = PREDICTORS[mode](labelled.labels[nn_idx], nn_sims)
    return np.asarray(labels, np.int64), np.asarray(conf, np.float32)
