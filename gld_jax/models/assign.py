"""The one checked write of imported weights into a model: all or nothing.

Both importers (gld_jax.models.keras_import, timm_import) build a key table
{key: (our variable, convert)} and hand it here with the source's arrays.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

Targets = dict[str, tuple[nnx.Variable, Any]]


def assign_weights(
    targets: Targets, source: dict[str, np.ndarray], what: str, *, source_name: str = "source"
) -> None:
    """Write ``source`` into ``targets`` if every key and shape fits; else raise, writing nothing.

    Args:
      targets: {key: (variable, convert)}, convert (or None) maps the source's
        array to ours (layout changes such as OIHW -> HWIO).
      source: {key: array} as read from the weight file.
      what: the model, for the message; source_name: the source's name in it.

    Raises:
      ValueError listing missing keys, unexpected keys and shape mismatches.
    """
    missing = sorted(set(targets) - set(source))
    unexpected = sorted(set(source) - set(targets))
    converted, mismatched = {}, []
    for name in sorted(set(targets) & set(source)):
        var, convert = targets[name]
        value = np.asarray(source[name])
        value = convert(value) if convert is not None else value
        if value.shape != var.shape:
            mismatched.append(
                f"{name}: {source_name} {source[name].shape} -> {value.shape}, ours {var.shape}"
            )
        converted[name] = value
    if missing or unexpected or mismatched:
        raise ValueError(
            f"weights do not match {what} ({len(targets)} weights):\n"
            f"  missing in {source_name} ({len(missing)}): {missing}\n"
            f"  unexpected in {source_name} ({len(unexpected)}): {unexpected}\n"
            f"  shape mismatches ({len(mismatched)}): {mismatched}"
        )
    for name, value in converted.items():
        var = targets[name][0]
        var[...] = jnp.asarray(value, dtype=var.dtype)
