"""Metrics: Global Average Precision (plain Python, no TensorFlow).

Names are re-exported lazily so that ``python -m gld_jax.metrics.gap`` does not
find its own module already imported by this package (runpy warns about that).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["gap_by_usage", "global_average_precision", "read_solution", "read_submission"]

if TYPE_CHECKING:
    from gld_jax.metrics.gap import (
        gap_by_usage,
        global_average_precision,
        read_solution,
        read_submission,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("gld_jax.metrics.gap"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
