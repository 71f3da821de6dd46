"""The classifier head's best classes per image, computed class-sharded on the mesh.

Each device scores its rows (split over 'data') against its slice of the head's
classes (split over 'model'), keeps its own top-k, and the k candidates of every
'model' shard are merged into the global top-k. No device ever holds a row's
cosines to all classes: at GLDv2 size that is 81,313-203,094 floats per image.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from gld_jax.losses import mask_padded_classes, sub_center_cosine
from gld_jax.train.mesh import DATA_AXIS, MODEL_AXIS

__all__ = ["head_top_k", "sharded_head_top_k"]


def head_top_k(
    embeddings: jax.Array,
    centers: jax.Array,
    k: int,
    num_valid_classes: int,
    first_class: jax.Array | int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Top-k classes by sub-centre cosine (max over a class's sub-centres).

    Args:
      embeddings: ``[N, D]`` float embeddings.
      centers: ``[C, K, D]`` head weights (a shard of the head whose first row is
        class ``first_class``); classes ``>= num_valid_classes`` are padding and
        never returned.
      k: classes kept per row (``<= num_valid_classes``).

    Returns:
      ``(cosines [N, k] float32, classes [N, k] int32)``, best first; equal
      cosines are ordered by class index, ascending.
    """
    cos = mask_padded_classes(
        sub_center_cosine(embeddings, centers), num_valid_classes, first_class
    )
    vals, idx = jax.lax.top_k(cos, k)
    return vals, idx + first_class


def _local_then_merge(e, w, *, k: int, num_valid_classes: int, model_axis: str):
    # This device's classes start at shard_index * classes_per_shard.
    per_shard = w.shape[0]
    first = jax.lax.axis_index(model_axis) * per_shard
    vals, idx = head_top_k(e, w, min(k, per_shard), num_valid_classes, first_class=first)
    # [n, shards * k] candidates in shard order, i.e. by class index within ties.
    vals = jax.lax.all_gather(vals, model_axis, axis=1, tiled=True)
    idx = jax.lax.all_gather(idx, model_axis, axis=1, tiled=True)
    best, pos = jax.lax.top_k(vals, k)
    return best, jnp.take_along_axis(idx, pos, axis=1)


def sharded_head_top_k(
    embeddings: jax.Array, centers: jax.Array, *, k: int, num_valid_classes: int, mesh: Mesh
) -> tuple[jax.Array, jax.Array]:
    """:func:`head_top_k` with rows split over 'data' and classes over 'model'.

    Call inside ``jax.jit``. ``embeddings`` ``[N, D]`` (N divisible by the 'data'
    size) and ``centers`` ``[C, K, D]`` (C divisible by the 'model' size, as the
    padded head is) are resharded as needed; the results come out split over
    'data'. Equal to :func:`head_top_k`, ties included: a shard's candidates
    arrive in class order and ``top_k`` keeps the earlier of equal values.
    """
    if k < 1 or k > num_valid_classes:
        raise ValueError(f"head top-k needs 1 <= k <= {num_valid_classes} classes, got {k}")
    fn = functools.partial(
        _local_then_merge, k=k, num_valid_classes=num_valid_classes, model_axis=MODEL_AXIS
    )
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(P(DATA_AXIS, None), P(MODEL_AXIS, None, None)),
        out_specs=(P(DATA_AXIS, None), P(DATA_AXIS, None)),
        check_vma=False,
    )(embeddings, centers)
