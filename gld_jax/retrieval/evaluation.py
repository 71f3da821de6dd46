"""The result of one retrieval evaluation and its GAP: what submissions,
reports and the pipeline's ladder read (gld_jax.retrieval.evaluate makes it)."""

from __future__ import annotations

import dataclasses

import numpy as np

from gld_jax.metrics import gap_by_usage


@dataclasses.dataclass
class Evaluation:
    """Everything a submission and a report need.

    ``neighbor_rows`` index ``index_ids`` / ``index_labels``; ``labels`` < 0 means
    no prediction.
    """

    query_ids: np.ndarray  # [Q] str
    query_labels: np.ndarray  # [Q] int, -1 = non-landmark (or unknown)
    labels: np.ndarray  # [Q] int64 predicted landmark
    confidences: np.ndarray  # [Q] float32
    neighbor_rows: np.ndarray  # [Q, k] int64 rows of the index
    neighbor_sims: np.ndarray  # [Q, k] float32 cosines
    index_ids: np.ndarray  # [N] str
    index_labels: np.ndarray  # [N] int64
    timings: dict


def gap_scores(ev: Evaluation, solution_path: str) -> dict[str, float]:
    """GAP overall (Public + Private rows) and per Usage when the CSV has one."""
    predictions = {
        i: (int(lab), float(c))
        for i, lab, c in zip(ev.query_ids.tolist(), ev.labels, ev.confidences, strict=True)
        if lab >= 0
    }
    return gap_by_usage(predictions, solution_path)
