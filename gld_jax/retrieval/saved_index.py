"""A built index saved with what its rows mean, so it can be searched again
without the embedding sets it was built from.

A folder holds the searcher (``index.json``, ``embeddings.npy`` and, for a
tree, ScaNN's assets: :meth:`gld_jax.retrieval.index.NeighborIndex.save`),
``rows.npz`` (the rows' image ids and landmark ids) and, for an ensemble
centred on its index means (``--center``), ``means.npz`` (one ``[D_m]`` mean
per model, applied to the queries the same way).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from gld_jax.retrieval.embeddings import EmbeddingSet
from gld_jax.retrieval.index import load_index
from gld_jax.retrieval.searchers import Searcher, build_index
from gld_jax.utils import fs

ROWS = "rows.npz"  # ids and labels of the rows
MEANS = "means.npz"  # per-model centring means
_META = "index.json"  # written last by a searcher's save: the folder is complete


@dataclasses.dataclass
class LabelledIndex:
    """A searcher and its rows' ``ids`` ``[N]`` str and ``labels`` ``[N]`` int64
    landmark ids; ``means`` the per-model centring means, or None."""

    searcher: Searcher
    ids: np.ndarray
    labels: np.ndarray
    means: list[np.ndarray] | None = None


def is_saved_index(directory: str) -> bool:
    """Whether `directory` holds a finished save (a searcher and its rows)."""
    return fs.exists(os.path.join(directory, _META)) and fs.exists(os.path.join(directory, ROWS))


def save_labelled_index(
    directory: str,
    searcher: Searcher,
    labelled: EmbeddingSet,
    means: list[np.ndarray] | None = None,
) -> None:
    """Writes `searcher` with the ids and labels of its rows (`labelled`, in row
    order) and the centring `means` when given."""
    searcher.save(directory)
    fs.save_npz(os.path.join(directory, ROWS), ids=labelled.ids.astype(str), labels=labelled.labels)
    if means is not None:
        fs.save_npz(os.path.join(directory, MEANS), **{f"m{i}": m for i, m in enumerate(means)})


def load_labelled_index(
    directory: str,
    *,
    num_neighbors: int,
    search: str = "scann",
    search_dtype: str = "float32",
    search_recall: float = 1.0,
    leaves_to_search: int | None = None,
    reorder: int | None = None,
) -> LabelledIndex:
    """Reads a folder written by :func:`save_labelled_index`.

    A saved ScaNN or exact index is searched as saved (`leaves_to_search` and
    `reorder` override a tree's search); any other `search` rebuilds its searcher
    from the saved rows (the accelerator's rows live on the devices).

    Raises:
      FileNotFoundError: no finished index in `directory`.
    """
    if not fs.exists(os.path.join(directory, ROWS)):
        raise FileNotFoundError(f"no saved index in {directory!r} (missing {ROWS})")
    searcher = load_index(directory, leaves_to_search=leaves_to_search, reorder=reorder)
    if search != "scann":
        searcher = build_index(
            searcher.embeddings,
            num_neighbors=num_neighbors,
            search=search,
            search_dtype=search_dtype,
            search_recall=search_recall,
        )
    rows = fs.load_npz(os.path.join(directory, ROWS))
    means = None
    means_path = os.path.join(directory, MEANS)
    if fs.exists(means_path):
        z = fs.load_npz(means_path)
        means = [z[f"m{i}"] for i in range(len(z))]
    return LabelledIndex(searcher, rows["ids"], rows["labels"], means)
