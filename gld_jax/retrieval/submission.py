"""Write a Kaggle landmark-recognition submission CSV."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gld_jax.utils import fs

__all__ = ["write_submission"]


def write_submission(
    path: str | Path,
    ids: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    confidences: Sequence[float] | np.ndarray,
) -> None:
    """Write ``id,landmarks`` rows, ``landmarks = "<landmark_id> <confidence>"``.

    Confidences are written with 6 decimals. A negative label means "no
    prediction" and leaves the field empty (the image still counts in GAP's M if
    it is a landmark). Read back with :func:`gld_jax.metrics.read_submission`.

    Args:
      path: output CSV (parent folders are created).
      ids: ``[Q]`` test image ids.
      labels: ``[Q]`` int predicted landmark ids (< 0 for none).
      confidences: ``[Q]`` finite float confidences.

    Raises:
      ValueError: lengths differ, repeated or empty id, non-integer label,
        non-finite confidence.
    """
    ids = [str(i) for i in ids]
    labels_arr = np.asarray(labels)
    conf_arr = np.asarray(confidences, dtype=np.float64)
    if not (len(ids) == labels_arr.shape[0] == conf_arr.shape[0]) or labels_arr.ndim != 1:
        raise ValueError(
            f"ids, labels, confidences must be 1-D of one length, got {len(ids)}, "
            f"{labels_arr.shape}, {conf_arr.shape}"
        )
    if labels_arr.size and not np.issubdtype(labels_arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels_arr.dtype}")
    if len(set(ids)) != len(ids) or any(not i or "," in i for i in ids):
        raise ValueError("ids must be unique, non-empty and contain no comma")
    path = str(path)
    fs.makedirs(fs.parent(path))
    with fs.open_file(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "landmarks"])
        for image_id, label, conf in zip(ids, labels_arr.tolist(), conf_arr.tolist(), strict=True):
            if label < 0:
                writer.writerow([image_id, ""])
                continue
            if not math.isfinite(conf):
                raise ValueError(f"confidence of {image_id!r} is not finite: {conf}")
            writer.writerow([image_id, f"{label} {conf:.6f}"])
