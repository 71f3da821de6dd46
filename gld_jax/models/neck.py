"""Embedding neck: Linear(C -> dim) -> [BatchNorm1d] -> Swish | PReLU | nothing.

The 3rd place used Linear -> Swish, the 1st place Linear -> BN -> PReLU; with
``activation="none"`` the embedding is the BatchNorm's output itself, centred
and free to use every direction (a Swish output lies mostly in the positive
orthant, see the README's "Confidences that rank").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gld_jax.models.layers import BatchNorm

_ACTIVATIONS = ("swish", "prelu", "none")


class PReLU(nnx.Module):
    """max(0, x) + a * min(0, x) with one learnable slope ``a`` per module (init 0.25).

    As PyTorch ``nn.PReLU()`` (num_parameters=1), which the recipe uses.
    """

    def __init__(self, init: float = 0.25):
        self.slope = nnx.Param(jnp.full((1,), init, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Any shape -> same shape and dtype."""
        a = self.slope[...].astype(x.dtype)
        return jnp.where(x >= 0, x, a * x)


class EmbeddingNeck(nnx.Module):
    """Pooled features [N, in_features] -> embeddings [N, dim] float32.

    BatchNorm uses batch stats in train mode and running averages after
    ``model.eval()`` (momentum 0.9, eps 1e-5: the PyTorch BatchNorm1d of the recipe).
    """

    def __init__(
        self,
        in_features: int,
        dim: int = 512,
        activation: str = "swish",
        *,
        batch_norm: bool = True,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
    ):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
        self.linear = nnx.Linear(in_features, dim, dtype=dtype, rngs=rngs)
        self.bn = (
            BatchNorm(dim, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)
            if batch_norm
            else None
        )
        self.activation = activation
        self.prelu = PReLU() if activation == "prelu" else None
        self.in_features = in_features
        self.dim = dim

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [N, in_features] -> [N, dim] float32."""
        y = self.linear(x)
        if self.bn is not None:
            y = self.bn(y)
        if self.prelu is not None:
            y = self.prelu(y)
        elif self.activation == "swish":
            y = jax.nn.swish(y)
        return y.astype(jnp.float32)
