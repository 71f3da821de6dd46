"""Metrics: Global Average Precision and confidence ranking (no TensorFlow).

Names are re-exported lazily so that ``python -m gld_jax.metrics.gap`` does not
find its own module already imported by this package (runpy warns about that).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "correct_mask",
    "gap_by_usage",
    "global_average_precision",
    "ranking_auc",
    "read_solution",
    "read_submission",
    "solution_has_usage",
]
_MODULES = {"correct_mask": "confidence", "ranking_auc": "confidence"}

if TYPE_CHECKING:
    from gld_jax.metrics.confidence import correct_mask, ranking_auc
    from gld_jax.metrics.gap import (
        gap_by_usage,
        global_average_precision,
        read_solution,
        read_submission,
        solution_has_usage,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        module = _MODULES.get(name, "gap")
        return getattr(importlib.import_module(f"gld_jax.metrics.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
