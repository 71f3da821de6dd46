"""The train state: every array a step reads or writes, as plain pytrees.

Parameters and batch statistics are kept as pure nested dicts (not nnx.State),
so Orbax, jax.tree and the sharding rules see ordinary pytrees. The dropout
rng is not state at all: each step reseeds it from (seed, stage, step), which
makes a resumed run draw exactly the masks an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

PyTree = Any


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: steps done in the current stage
    params: PyTree  # nnx.Param values
    batch_stats: PyTree  # nnx.BatchStat values (BN running mean/var)
    opt_state: optax.OptState


def split_model(model: nnx.Module):
    """(graphdef, params, batch_stats, rng_state) with pure-dict states."""
    graphdef, params, batch_stats, rngs = nnx.split(model, nnx.Param, nnx.BatchStat, nnx.RngState)
    return graphdef, params.to_pure_dict(), batch_stats.to_pure_dict(), rngs.to_pure_dict()


def init_train_state(params: PyTree, batch_stats: PyTree, tx: optax.GradientTransformation):
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
    )


def update_model(model: nnx.Module, params: PyTree, batch_stats: PyTree) -> None:
    """Writes trained values back into a live module (for stage hand-over)."""
    _, p, b, _ = nnx.split(model, nnx.Param, nnx.BatchStat, nnx.RngState)
    nnx.replace_by_pure_dict(p, params)
    nnx.replace_by_pure_dict(b, batch_stats)
    nnx.update(model, p, b)
