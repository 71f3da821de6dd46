"""Device mesh and sharding rules.

The mesh has axes ('data', 'model'). The batch is split over every device (both
axes), so the backbone is data-parallel over the whole mesh; the classifier
head's classes are split over 'model' (a class-sharded head, so 200k classes
fit), and the embeddings meet the head split over 'data' only (an all-gather of
[N, 512] within each data group, instead of gathering the head).
Rules are data: (regex over the parameter path, PartitionSpec), first match wins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gld_jax.config.defaults import resolve_mesh_shape

DATA_AXIS = "data"
MODEL_AXIS = "model"

# Head centres [C, K, D] are split over classes; everything else is replicated.
DEFAULT_RULES: tuple[tuple[str, P], ...] = (
    (r"(^|/)head/centers(/|$)", P(MODEL_AXIS, None, None)),
    (r".*", P()),
)


def device_grid(devices: Sequence[jax.Device], data: int, model: int) -> np.ndarray:
    """The devices as a [data, model] array.

    On TPUs the layout follows the chips' torus (`mesh_utils.create_device_mesh`):
    each 'model' group, whose head collectives run every step, is a line of
    neighbouring chips, not whatever `jax.devices()` order puts together.
    Elsewhere (CPU, GPU) the order is the devices' own.
    """
    if devices[0].platform == "tpu" and len(devices) > 1:
        from jax.experimental import mesh_utils

        try:
            return mesh_utils.create_device_mesh((data, model), devices)
        except (ValueError, AssertionError, NotImplementedError):
            # Axes that do not fit the torus whole (8 over a 4x4 slice) are split
            # across physical axes.
            return mesh_utils.create_device_mesh(
                (data, model), devices, allow_split_physical_axes=True
            )
    return np.asarray(devices).reshape(data, model)


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'model') mesh over all (or the given) devices (see `device_grid`)."""
    devices = list(jax.devices() if devices is None else devices)
    d, m = resolve_mesh_shape(data, model, len(devices))
    return Mesh(device_grid(devices, d, m), (DATA_AXIS, MODEL_AXIS))


def path_to_str(path: tuple) -> str:
    """'a/b/0/c' from a jax key path or an nnx state path."""
    parts = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                p = getattr(p, attr)
                break
        parts.append(str(p))
    return "/".join(parts)


# FSDP: parameters (and their optimizer moments) of at least this many elements
# are split over 'data' too; smaller ones (norms, biases) stay replicated, where
# a gather would cost more than the memory it saves.
FSDP_MIN_SIZE = 2**14


def _fsdp_spec(shape: tuple[int, ...], mesh: Mesh) -> P:
    """Split the largest dimension that 'data' divides; replicated if none does."""
    n = mesh.shape[DATA_AXIS]
    if n == 1 or int(np.prod(shape)) < FSDP_MIN_SIZE:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % n == 0:
            return P(*([None] * d + [DATA_AXIS]))
    return P()


def spec_for(
    path: str, shape: tuple[int, ...], mesh: Mesh, rules=DEFAULT_RULES, *, fsdp: bool = False
) -> P:
    """The PartitionSpec of the first matching rule, or replicated when the rule's
    sharded dimensions do not divide evenly (small heads on big meshes). With
    `fsdp`, a leaf the rules leave replicated is split over 'data' instead."""
    spec = next((spec for pattern, spec in rules if re.search(pattern, path)), P())
    if len(spec) > len(shape):
        spec = P()
    for dim, axis in zip(shape, spec, strict=False):
        if axis is not None and dim % mesh.shape[axis]:
            spec = P()
            break
    if fsdp and spec == P() and shape:
        return _fsdp_spec(shape, mesh)
    return spec


def tree_shardings(tree, mesh: Mesh, rules=DEFAULT_RULES, *, fsdp: bool = False):
    """NamedShardings for every leaf of a pytree (params, optimizer state, ...).

    Optimizer moments mirror their parameter's path (e.g. '0/mu/head/centers'),
    so the same regexes shard them the same way as the parameter. `fsdp` also
    splits the large replicated leaves over 'data' (gathered by XLA where used).
    """

    def one(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, spec_for(path_to_str(path), shape, mesh, rules, fsdp=fsdp))

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over all devices, the rest replicated.

    Split over 'data' alone, the `model` devices of a data group would all run
    the backbone on the same images: model-times the compute for nothing.
    """
    return NamedSharding(mesh, P((DATA_AXIS, MODEL_AXIS)))


def head_input_sharding(mesh: Mesh) -> NamedSharding:
    """Embeddings [N, D] entering the class-sharded head: rows split over 'data',
    so each device scores its data group's rows against its shard of classes."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_on_mesh(tree, shardings):
    """Places a pytree that every process built identically (same seed, same code)
    as global arrays with `shardings` (a matching pytree of NamedSharding).

    One process: `jax.device_put`. Several: each process uploads only its own
    devices' shards from host memory. `jax.device_put` would first check that
    every process holds the same values, with one cross-process all-gather per
    array: at GLDv2 scale that moves the whole 203,094-class head and its Adam
    state (3.7 GB) to every host, and it cost 3.4 s for the tiny test model.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)
