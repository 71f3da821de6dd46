"""One stage's compiled update: optimizer, train state, shardings and the jitted step.

The trainer builds it from a live model; `--dry_run --compile` builds the same
thing from an abstract one (`nnx.eval_shape`) and compiles it for a TPU
topology, so what the dry run measures is exactly what the trainer runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from gld_jax.config.defaults import stage_accumulate_steps
from gld_jax.data.augment_config import AugmentConfig, augments_on_device
from gld_jax.train.optim import learning_rate_schedule, make_optimizer
from gld_jax.train.stages import StagePlan
from gld_jax.train.state import TrainState, init_train_state, split_model
from gld_jax.train.step import make_train_step, state_shardings


@dataclasses.dataclass(frozen=True)
class StageStep:
    """What one stage trains with.

    state: the initial TrainState (host arrays), or its jax.ShapeDtypeStruct
      tree when built from an abstract model.
    shardings: NamedSharding per leaf of `state`.
    step: jitted `(state, batch, margins) -> (state, metrics)`, state donated.
    """

    graphdef: object
    schedule: optax.Schedule
    tx: optax.GradientTransformation
    state: TrainState
    shardings: TrainState
    accumulate_steps: int
    step: Callable


def _is_abstract(tree) -> bool:
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


def concrete_rng_state(rng_state):
    """An abstract model's rng state with placeholder values (zero keys and
    counts): the step closes over it but reseeds every dropout stream from
    (run key, step) before use, so the values never reach a result."""

    def one(x):
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(jnp.zeros((*x.shape, 2), jnp.uint32))
        return jnp.zeros(x.shape, x.dtype)

    return jax.tree.map(one, rng_state)


def make_stage_step(
    config,
    plan: StagePlan,
    model,
    mesh: Mesh,
    *,
    run_key: jax.Array,
    platform: str | None = None,
) -> StageStep:
    """The stage's optimizer, initial state, shardings and jitted step.

    Args:
      model: the LandmarkModel with the stage's head, live or from
        `nnx.eval_shape` (then `state` is abstract and nothing is allocated).
      run_key: the run's key; the step's dropout and augmentation keys are
        folded with the stage.
      platform: where the step will run ("cpu", "gpu", "tpu"; default JAX's
        backend), which decides `input.augment_on="auto"`.
    """
    schedule = learning_rate_schedule(plan.learning_rate, plan.steps, plan.warmup_steps)
    tx = make_optimizer(config.optimizer, schedule)
    model.train()
    graphdef, params, stats, rng_state = split_model(model)
    ema = config.optimizer.ema_decay > 0
    if _is_abstract(params):
        state = jax.eval_shape(lambda p, s: init_train_state(p, s, tx, ema=ema), params, stats)
        rng_state = concrete_rng_state(rng_state)
    else:
        state = init_train_state(params, stats, tx, ema=ema)
    shardings = state_shardings(state, mesh, fsdp=config.mesh.fsdp)
    accumulate = stage_accumulate_steps(config, plan.index)
    step = make_train_step(
        graphdef=graphdef,
        rng_state=rng_state,
        tx=tx,
        scale=config.loss.scale,
        key=jax.random.fold_in(run_key, plan.index),
        mesh=mesh,
        state_sharding=shardings,
        accumulate=accumulate,
        ema_decay=config.optimizer.ema_decay,
        augment=AugmentConfig()
        if augments_on_device(config, platform or jax.default_backend())
        else None,
    )
    return StageStep(graphdef, schedule, tx, state, shardings, accumulate, step)
