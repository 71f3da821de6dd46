"""The compiled steps: one training update and one embedding pass.

Both are pure functions of arrays. `make_train_step` closes over the static
parts (graphdef, optimizer, loss scale) and returns a `jax.jit` with explicit
in/out shardings for the mesh: the batch split over 'data', the head's classes
over 'model', everything else replicated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from gld_jax.losses import sub_center_arcface_loss, sub_center_cosine
from gld_jax.train import mesh as mesh_lib
from gld_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def _reseeded(model: nnx.Module, key: jax.Array, step: jax.Array) -> None:
    # Dropout / drop-path masks are a function of (run key, step) only.
    nnx.reseed(model, dropout=jax.random.fold_in(key, step))


def train_step_fn(
    state: TrainState,
    batch: Batch,
    margins: jax.Array,
    *,
    graphdef,
    rng_state,
    tx: optax.GradientTransformation,
    scale: float,
    key: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update on a global batch.

    Args:
      state: TrainState (params, batch_stats, opt_state, step).
      batch: {"image": uint8 [N,S,S,3], "label": int32 [N]} (global batch).
      margins: float32 [C] per-class angular margins (radians).
    Returns:
      (new state, metrics {"loss", "accuracy", "grad_norm"} as scalars).
    """

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.batch_stats, rng_state)
        _reseeded(model, key, state.step)
        embeddings = model(batch["image"])
        centers = model.head.centers.value
        losses = sub_center_arcface_loss(embeddings, centers, batch["label"], margins, scale)
        cosine = sub_center_cosine(embeddings, centers)
        accuracy = jnp.mean(jnp.argmax(cosine, axis=-1) == batch["label"])
        new_stats = nnx.state(model, nnx.BatchStat).to_pure_dict()
        return jnp.mean(losses), (new_stats, accuracy)

    (loss, (new_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state
    )
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.global_norm(grads)}
    return new_state, metrics


def state_shardings(state: TrainState, mesh: Mesh):
    """Shardings for every leaf of a TrainState, from the mesh's rules."""
    return mesh_lib.tree_shardings(state, mesh)


def make_train_step(
    *,
    graphdef,
    rng_state,
    tx: optax.GradientTransformation,
    scale: float,
    key: jax.Array,
    mesh: Mesh,
    state_sharding,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]:
    """The jitted train step; the input state buffer is donated."""
    fn = functools.partial(
        train_step_fn, graphdef=graphdef, rng_state=rng_state, tx=tx, scale=scale, key=key
    )
    batch_sharding = {
        "image": mesh_lib.batch_sharding(mesh),
        "label": mesh_lib.batch_sharding(mesh),
    }
    return jax.jit(
        fn,
        in_shardings=(state_sharding, batch_sharding, mesh_lib.replicated(mesh)),
        out_shardings=(state_sharding, mesh_lib.replicated(mesh)),
        donate_argnums=(0,),
    )


def embed_fn(params, batch_stats, images: jax.Array, *, graphdef, rng_state) -> jax.Array:
    """Eval-mode embeddings, L2-normalised: uint8 [N,S,S,3] -> float32 [N,D]."""
    model = nnx.merge(graphdef, params, batch_stats, rng_state)
    emb = model(images)
    return emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)


def make_embed_step(*, graphdef, rng_state, mesh: Mesh, params_sharding, stats_sharding):
    """The jitted embedding step (eval-mode graphdef), batch split over 'data'."""
    fn = functools.partial(embed_fn, graphdef=graphdef, rng_state=rng_state)
    return jax.jit(
        fn,
        in_shardings=(params_sharding, stats_sharding, mesh_lib.batch_sharding(mesh)),
        out_shardings=mesh_lib.batch_sharding(mesh),
    )
