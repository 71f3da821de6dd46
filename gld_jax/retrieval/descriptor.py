"""A run's or an ensemble's global descriptor as one pure JAX function of a
flat parameter list, the form `python -m gld_jax.export` serialises.

Per model m: its eval-mode embedding of the image at its final size, L2-normalised
(`GlobalDescriptor`, the embedding step without the head). The ensemble's
descriptor scales each model's by sqrt(w_m / sum w) and normalises the
concatenation, as `retrieval.ensemble.combine_embedding_sets` combines stored
rows, so its dot products are the weighted mean of the models' cosines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gld_jax.data.resize import resize_square
from gld_jax.models.landmark import GlobalDescriptor
from gld_jax.train.state import split_model


@dataclasses.dataclass(frozen=True)
class DescriptorPart:
    """One model's static half: its eval graph, how its parameter leaves nest,
    its preprocessing size and ensemble weight."""

    graphdef: nnx.GraphDef
    treedef: jax.tree_util.PyTreeDef
    rng_state: dict
    num_leaves: int
    image_size: int
    weight: float
    dim: int


@dataclasses.dataclass
class Descriptor:
    """`parts` (one per model) and `leaves`: every model's parameters and batch
    statistics as one flat list of host arrays, in part order."""

    parts: list[DescriptorPart]
    leaves: list[np.ndarray]

    @property
    def dim(self) -> int:
        return sum(p.dim for p in self.parts)


def make_descriptor(
    models: Sequence, image_sizes: Sequence[int], weights: Sequence[float] | None = None
) -> Descriptor:
    """The descriptor of trained LandmarkModels (their heads left out), each
    preprocessed at its image size; `weights` default to 1 each."""
    weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
    if not len(models) == len(image_sizes) == len(weights):
        raise ValueError(f"{len(models)} models, {len(image_sizes)} sizes, {len(weights)} weights")
    parts, leaves = [], []
    for model, size, weight in zip(models, image_sizes, weights, strict=True):
        net = GlobalDescriptor(model)
        net.eval()
        graphdef, params, stats, rng_state = split_model(net)
        net.train()  # the shared submodules go back as they were
        flat, treedef = jax.tree.flatten((params, stats))
        leaves += [np.asarray(jax.device_get(x)) for x in flat]
        parts.append(
            DescriptorPart(graphdef, treedef, rng_state, len(flat), size, weight, net.embedding_dim)
        )
    return Descriptor(parts, leaves)


def descriptors_from_images(
    desc: Descriptor, leaves: Sequence[jax.Array], images: Sequence[jax.Array]
) -> jax.Array:
    """float32 ``[N, D]`` unit rows from per-model batches ``images[m]`` uint8
    ``[N, S_m, S_m, 3]`` (already resized to each model's size)."""
    total = sum(p.weight for p in desc.parts)
    blocks, start = [], 0
    for part, batch in zip(desc.parts, images, strict=True):
        params, stats = jax.tree.unflatten(
            part.treedef, list(leaves[start : start + part.num_leaves])
        )
        start += part.num_leaves
        net = nnx.merge(part.graphdef, params, stats, part.rng_state)
        blocks.append(net(batch) * jnp.sqrt(part.weight / total))
    out = jnp.concatenate(blocks, axis=-1)
    return out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)


def descriptor_of_image(desc: Descriptor, leaves: Sequence[jax.Array], image: jax.Array):
    """float32 ``[D]`` of one uint8 ``[H, W, 3]`` image of any size, resized in
    JAX (`gld_jax.data.resize`) to each model's size."""
    images = [resize_square(image, part.image_size)[None] for part in desc.parts]
    return descriptors_from_images(desc, leaves, images)[0]
