"""One entry point for every searcher: `build_index(embeddings, search=...)`.

ScaNN and numpy (gld_jax.retrieval.index) on the CPU, or the devices'
sharded matmul (gld_jax.retrieval.accelerator_search); all answer
`search(queries, k) -> (rows [Q, k], cosines [Q, k])`.
"""

from __future__ import annotations

import numpy as np

from gld_jax.retrieval import accelerator_search
from gld_jax.retrieval.index import NeighborIndex, build_scann_index, unit_rows

Searcher = NeighborIndex | accelerator_search.AcceleratorIndex


def build_index(
    embeddings: np.ndarray,
    *,
    search: str = "scann",
    num_neighbors: int = 10,
    search_dtype: str = "float32",
    search_recall: float = 1.0,
    **scann_params,
):
    """A searcher over L2-normalised embeddings, by `eval.search`:

    - "scann": :func:`build_scann_index` (exact numpy below its brute-force
      threshold, a ScaNN tree above), with `scann_params`;
    - "exact_cpu": exact numpy search at any size;
    - "accelerator": rows sharded over the devices, searched by matmul
      (gld_jax.retrieval.accelerator_search), in `search_dtype`, exact top-k
      for `search_recall` 1.0, else `lax.approx_max_k` with that recall target;
    - "auto": the accelerator where a TPU or GPU is present and the index fits, else ScaNN.

    Every searcher has `search(queries, k) -> (rows [Q, k], cosines [Q, k])`,
    `embeddings`, `size`, `dim` and `kind`.

    Raises:
      ValueError: bad embeddings or parameters; IndexTooLargeError (a
        ValueError) for "accelerator" with an index its devices cannot hold.
    """
    emb = unit_rows(embeddings, num_neighbors)
    kind = accelerator_search.resolve_search(
        search, rows=emb.shape[0], dim=emb.shape[1], dtype=search_dtype
    )
    if kind == "accelerator":
        return accelerator_search.AcceleratorIndex(
            emb,
            num_neighbors=num_neighbors,
            dtype=search_dtype,
            approx=search_recall < 1.0,
            recall_target=search_recall,
        )
    if kind == "exact_cpu":
        return NeighborIndex(emb, num_neighbors=num_neighbors)
    return build_scann_index(emb, num_neighbors=num_neighbors, **scann_params)
