"""Ensembles of embedding sets: one row per image, models side by side.

Each model's rows are L2-normalised, scaled by ``sqrt(w_m / sum(w))`` and
concatenated, so the dot product of two combined rows is the weighted mean of
the per-model cosines, ``sum_m w_m cos_m / sum_m w_m``, and every combined row
has unit norm again (re-normalised anyway, against float16 rounding).

The models' head top-k lists (when every set has them) are merged into one list
per image by :func:`merge_head_lists`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gld_jax.retrieval.embeddings import EmbeddingSet
from gld_jax.retrieval.index import row_norms

__all__ = ["combine_embedding_sets", "l2_normalize", "merge_head_lists", "model_means"]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` ``[N, D]`` scaled to unit L2 norm (float32; zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(row_norms(x), eps)[:, None]


def model_means(sets: Sequence[EmbeddingSet]) -> list[np.ndarray]:
    """Mean L2-normalised row ``[D_m]`` of each model's (index) set.

    Embeddings of a small or from-scratch model often share one large common
    direction (every cosine near 1); subtracting the index mean before
    re-normalising spreads the cosines out (mean centring, as before PCA
    whitening in retrieval)."""
    return [l2_normalize(s.embeddings).mean(axis=0) for s in sets]


def _align(reference: np.ndarray, other: EmbeddingSet, name: str) -> np.ndarray:
    """Row order of ``other`` that matches ``reference`` ids; every id must be there."""
    if len(set(other.ids.tolist())) != len(other):
        raise ValueError(f"{name}: repeated ids")
    pos = {i: n for n, i in enumerate(other.ids.tolist())}
    missing = [i for i in reference.tolist() if i not in pos]
    if missing or len(other) != len(reference):
        raise ValueError(
            f"{name}: ids differ from the first set ({len(missing)} of {len(reference)} missing, "
            f"{len(other)} rows vs {len(reference)})"
        )
    return np.fromiter((pos[i] for i in reference.tolist()), np.int64, len(reference))


def combine_embedding_sets(
    sets: Sequence[EmbeddingSet],
    weights: Sequence[float] | None = None,
    means: Sequence[np.ndarray] | None = None,
) -> EmbeddingSet:
    """Concatenates per-model embeddings of the same images into one set.

    Args:
      sets: one :class:`EmbeddingSet` per model over the same image ids (any
        row order; rows are aligned to the first set's order by id). Dims may differ.
      weights: one positive weight per model (default: all 1); the combined
        cosine is ``sum_m w_m cos_m / sum_m w_m``.
      means: optional ``[D_m]`` vector per model subtracted from its
        L2-normalised rows before they are normalised again (centring on the
        index mean, see :func:`model_means`); None leaves rows as they are.

    Returns:
      An EmbeddingSet ``[N, sum D_m]`` float32 with unit rows, the first set's
      ids and labels.

    Raises:
      ValueError: no sets, weights of the wrong length or not positive, ids
        that differ between sets, labels that disagree.
    """
    if not sets:
        raise ValueError("no embedding sets to combine")
    weights = [1.0] * len(sets) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sets):
        raise ValueError(f"{len(weights)} weights for {len(sets)} embedding sets")
    if any(not np.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"weights must be positive, got {weights}")
    if means is not None and len(means) != len(sets):
        raise ValueError(f"{len(means)} means for {len(sets)} embedding sets")
    total = sum(weights)
    ref = sets[0]
    dims = [emb.embeddings.shape[1] for emb in sets]
    # One output array filled block by block, normalised in place: at GLDv2 scale
    # (1.6M rows) each float32 copy of a 512-d model is 3.2 GB.
    out = np.empty((len(ref), sum(dims)), np.float32)
    offset = 0
    for m, (emb, w, dim) in enumerate(zip(sets, weights, dims, strict=True)):
        order = None if m == 0 else _align(ref.ids, emb, f"set {m}")
        labels = emb.labels if order is None else emb.labels[order]
        if not np.array_equal(labels, ref.labels):
            raise ValueError(f"set {m}: labels disagree with the first set for the same ids")
        block = out[:, offset : offset + dim]
        block[...] = emb.embeddings if order is None else emb.embeddings[order]
        _normalize_rows_(block)
        if means is not None:
            block -= np.asarray(means[m], np.float32)
            _normalize_rows_(block)
        block *= np.float32(np.sqrt(w / total))
        offset += dim
    _normalize_rows_(out)
    head = (None, None)
    if all(emb.has_head for emb in sets):
        aligned = [
            emb if m == 0 else emb.select(_align(ref.ids, emb, f"set {m}"))
            for m, emb in enumerate(sets)
        ]
        head = merge_head_lists(
            [e.head_labels for e in aligned], [e.head_scores for e in aligned], weights
        )
    return EmbeddingSet(ref.ids, out, ref.labels, *head)


def merge_head_lists(
    labels: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One top-k list per row from the models' head top-k lists.

    The exact ensemble head score of a class is the weighted mean of the models'
    cosines to it; each model kept only its top ``k``. A class missing from a
    model's list gets that model's ``k``-th cosine there (an upper bound on the
    cosine it has), so a class one model ranks first and another just missed is
    not sunk by a zero. With ``k`` = every class the result is exact.

    Args:
      labels: per model ``[N, k_m]`` int landmark ids, rows aligned across models.
      scores: per model ``[N, k_m]`` float cosines, best first.
      weights: per model positive weights (default 1 each).

    Returns:
      ``(labels [N, k], scores [N, k] float32)`` with ``k = min k_m``, best first;
      equal scores are ordered by landmark id, ascending.
    """
    if not labels or len(labels) != len(scores):
        raise ValueError(f"{len(labels)} head label lists and {len(scores)} score lists")
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    if len(weights) != len(labels):
        raise ValueError(f"{len(weights)} weights for {len(labels)} head lists")
    labels = [np.asarray(x, np.int64) for x in labels]
    scores = [np.asarray(x, np.float64) for x in scores]
    k = min(x.shape[1] for x in labels)
    cand = np.concatenate(labels, axis=1)  # [N, sum k_m] every class some model listed
    merged = np.zeros(cand.shape, np.float64)
    for lab, sc, w in zip(labels, scores, weights, strict=True):
        hit = cand[:, :, None] == lab[:, None, :]  # [N, J, k_m]
        found = hit.any(axis=2)
        own = np.einsum("njk,nk->nj", hit, sc)
        merged += w * np.where(found, own, sc[:, -1:])
    merged /= weights.sum()
    # A class listed by several models appears several times: keep its first copy.
    dup = np.triu(cand[:, :, None] == cand[:, None, :], k=1).any(axis=1)
    merged[dup] = -np.inf
    order = np.lexsort((cand, -merged), axis=1)[:, :k]  # last key is primary
    return (
        np.take_along_axis(cand, order, 1),
        np.take_along_axis(merged, order, 1).astype(np.float32),
    )


def _normalize_rows_(x: np.ndarray, eps: float = 1e-12, chunk: int = 65_536) -> None:
    """In-place L2 normalisation of the rows of a float32 (view) ``[N, D]``, in chunks."""
    for s in range(0, len(x), chunk):
        part = x[s : s + chunk]
        part /= np.maximum(row_norms(part), eps)[:, None]
