"""The compiled training update (the embedding pass is gld_jax.retrieval.extract's).

A pure function of arrays. `make_train_step` closes over the static
parts (graphdef, optimizer, loss scale) and returns a `jax.jit` with explicit
in/out shardings for the mesh: the batch split over all devices, the head's
classes over 'model', everything else replicated (see train.mesh).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from gld_jax.data.augment_config import AugmentConfig
from gld_jax.data.device_augment import augment_batch
from gld_jax.losses import mask_padded_classes, sub_center_arcface_loss, sub_center_cosine
from gld_jax.train import mesh as mesh_lib
from gld_jax.train.state import TrainState

Batch = dict[str, jax.Array]
# Folded into the stage key for the augmentation stream, apart from dropout's.
_AUGMENT_STREAM = 0x617567


def _reseeded(model: nnx.Module, key: jax.Array, step: jax.Array) -> None:
    # Dropout / drop-path masks are a function of (run key, step) only.
    nnx.reseed(model, dropout=jax.random.fold_in(key, step))


def _micro_batches(batch: Batch, accumulate: int) -> Batch:
    """[N, ...] -> [A, N/A, ...] taking every A-th row into one micro-batch, so
    each micro-batch is spread over all devices of the mesh."""

    def split(x):
        n = x.shape[0]
        return jnp.swapaxes(x.reshape(n // accumulate, accumulate, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def augmented_batch(
    batch: Batch,
    key: jax.Array,
    step: jax.Array,
    augment: AugmentConfig,
    sharding: jax.sharding.Sharding | None = None,
) -> Batch:
    """The batch with its images flipped, warped and cut out on the device
    (float32 [N, S, S, 3]), drawn from (stage key, the augmentation stream,
    step): the same step always draws the same, so a resume repeats nothing."""
    aug_key = jax.random.fold_in(jax.random.fold_in(key, _AUGMENT_STREAM), step)
    images = augment_batch(batch["image"], aug_key, augment)
    if sharding is not None:
        images = jax.lax.with_sharding_constraint(images, sharding)
    return {**batch, "image": images}


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
    accumulate: int = 1,
    ema_decay: float = 0.0,
    batch_sharding: jax.sharding.Sharding | None = None,
    head_input_sharding: jax.sharding.Sharding | None = None,
    augment: AugmentConfig | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on a global batch.

    Args:
      state: TrainState (params, batch_stats, opt_state, step, ema_params).
      batch: {"image": uint8 [N,S,S,3], "label": int32 [N]} (global batch).
      margins: float32 [C_padded] per-class angular margins (radians).
      accumulate: split the batch into this many micro-batches, run them one
        after another and average their gradients (same update size, 1/A of
        the activation memory; BatchNorm sees micro-batch statistics).
      ema_decay: if > 0, also update `state.ema_params` (used for evaluation).
      batch_sharding, head_input_sharding: the layout of the batch (all devices)
        and of the embeddings entering the class-sharded head (the 'data' axis),
        from train.mesh; both None leaves the layout to XLA.
      augment: flip, shift-scale-rotate and cutout the batch here (device
        augmentation) with parameters drawn from (key, step, example index);
        None: the images arrive augmented (or unaugmented) from the host.
    Returns:
      (new state, metrics {"loss", "accuracy", "grad_norm"} as float32 scalars).
    """

    def loss_fn(params, batch_stats, micro, micro_index):
        model = nnx.merge(graphdef, params, batch_stats, rng_state)
        _reseeded(model, key, state.step * accumulate + micro_index)
        embeddings = model(micro["image"])
        if head_input_sharding is not None:
            # Pin the backbone's output to the batch layout (else propagation
            # pulls the head's layout back through the backbone and each
            # device of a data group computes the same images), then gather the
            # small embeddings within each data group rather than letting XLA
            # gather the large class-sharded head.
            embeddings = jax.lax.with_sharding_constraint(embeddings, batch_sharding)
            embeddings = jax.lax.with_sharding_constraint(embeddings, head_input_sharding)
        centers = model.head.centers[...]
        valid = model.head.num_classes
        with jax.named_scope("head_loss"):
            losses = sub_center_arcface_loss(
                embeddings, centers, micro["label"], margins, scale, num_valid_classes=valid
            )
            cosine = mask_padded_classes(sub_center_cosine(embeddings, centers), valid)
            accuracy = jnp.mean(jnp.argmax(cosine, axis=-1) == micro["label"])
        new_stats = nnx.state(model, nnx.BatchStat).to_pure_dict()
        return jnp.mean(losses), (new_stats, accuracy)

    if augment is not None:
        batch = augmented_batch(batch, key, state.step, augment, batch_sharding)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accumulate == 1:
        (loss, (new_stats, accuracy)), grads = grad_fn(state.params, state.batch_stats, batch, 0)
    else:

        def body(carry, xs):
            stats, grad_sum, loss_sum, acc_sum = carry
            micro, i = xs
            (loss, (stats, acc)), grads = grad_fn(state.params, stats, micro, i)
            grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
            return (stats, grad_sum, loss_sum + loss, acc_sum + acc), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        init = (state.batch_stats, zeros, jnp.float32(0), jnp.float32(0))
        xs = (_micro_batches(batch, accumulate), jnp.arange(accumulate))
        (new_stats, grad_sum, loss_sum, acc_sum), _ = jax.lax.scan(body, init, xs)
        grads = jax.tree.map(lambda g: g / accumulate, grad_sum)
        loss, accuracy = loss_sum / accumulate, acc_sum / accumulate

    with jax.named_scope("optimizer"):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema_decay > 0:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=new_stats,
        opt_state=opt_state,
        ema_params=ema,
    )
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.global_norm(grads)}
    return new_state, metrics


def state_shardings(state: TrainState, mesh: Mesh, *, fsdp: bool = False):
    """Shardings for every leaf of a TrainState, from the mesh's rules (`fsdp`:
    large backbone/neck leaves split over 'data' as well, see train.mesh)."""
    return mesh_lib.tree_shardings(state, mesh, fsdp=fsdp)


def make_train_step(
    *,
    graphdef,
    rng_state,
    tx: optax.GradientTransformation,
    scale: float,
    key: jax.Array,
    mesh: Mesh,
    state_sharding,
    accumulate: int = 1,
    ema_decay: float = 0.0,
    augment: AugmentConfig | None = None,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]:
    """The jitted train step (see train_step_fn); the input state buffer is donated."""
    fn = functools.partial(
        train_step_fn,
        graphdef=graphdef,
        rng_state=rng_state,
        tx=tx,
        scale=scale,
        key=key,
        accumulate=accumulate,
        ema_decay=ema_decay,
        augment=augment,
        batch_sharding=mesh_lib.batch_sharding(mesh),
        head_input_sharding=mesh_lib.head_input_sharding(mesh),
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
