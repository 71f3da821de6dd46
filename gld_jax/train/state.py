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
    ema_params: PyTree = None  # exponential moving average of params, or None


def split_model(model: nnx.Module):
    """(graphdef, params, batch_stats, rng_state) with pure-dict states."""
    graphdef, params, batch_stats, rngs = nnx.split(model, nnx.Param, nnx.BatchStat, nnx.RngState)
    return graphdef, params.to_pure_dict(), batch_stats.to_pure_dict(), rngs.to_pure_dict()


def init_train_state(
    params: PyTree, batch_stats: PyTree, tx: optax.GradientTransformation, *, ema: bool = False
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
    )


def eval_params(state: TrainState) -> PyTree:
    """The parameters evaluation uses: the EMA when it is kept."""
    return state.params if state.ema_params is None else state.ema_params


def update_model(model: nnx.Module, params: PyTree, batch_stats: PyTree) -> None:
    """Writes trained values back into a live module (for stage hand-over)."""
    _, p, b, _ = nnx.split(model, nnx.Param, nnx.BatchStat, nnx.RngState)
    nnx.replace_by_pure_dict(p, params)
    nnx.replace_by_pure_dict(b, batch_stats)
    nnx.update(model, p, b)


def state_to_tree(state: TrainState) -> dict:
    """The checkpointed form: a plain dict, without the EMA when none is kept (so
    runs with and without EMA write the same layout)."""
    tree = {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
    }
    if state.ema_params is not None:
        tree["ema_params"] = state.ema_params
    return tree


def state_from_tree(state: TrainState, tree: dict) -> TrainState:
    """Inverse of `state_to_tree`, keeping `state`'s structure."""
    return state.replace(
        step=tree["step"],
        params=tree["params"],
        batch_stats=tree["batch_stats"],
        opt_state=tree["opt_state"],
        ema_params=tree.get("ema_params", state.ema_params),
    )
