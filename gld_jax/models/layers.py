"""The layer names the models import, and stochastic depth.

The layers live by job: convolution forms per backend and their gradients
(conv.py), BatchNorm with its CPU gradient and factory (batch_norm.py), nnx
variables cheap to update under a trace (traced.py). They are re-exported here
so a model names its building blocks from one place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gld_jax.models.batch_norm import BatchNorm, batch_norm
from gld_jax.models.conv import (
    Conv2d,
    ConvImpl,
    DepthwiseConv2d,
    chunked_normal,
    conv2d,
    conv_kernel_init,
    resolve_padding,
    same_padding,
    trace_backend,
    tracing_for,
)
from gld_jax.models.traced import (
    TracedUpdateBatchStat,
    TracedUpdateRngCount,
    traceable_rngs,
    with_traceable_counter,
)

__all__ = [
    "BatchNorm",
    "Conv2d",
    "ConvImpl",
    "DepthwiseConv2d",
    "DropPath",
    "TracedUpdateBatchStat",
    "TracedUpdateRngCount",
    "batch_norm",
    "chunked_normal",
    "conv2d",
    "conv_kernel_init",
    "resolve_padding",
    "same_padding",
    "trace_backend",
    "traceable_rngs",
    "tracing_for",
    "with_traceable_counter",
]


class DropPath(nnx.Module):
    """Stochastic depth: zero a whole sample's residual branch with prob ``rate``.

    Keeps are rescaled by 1 / (1 - rate), as Keras ``Dropout(noise_shape=(N,1,1,1))``
    in the EfficientNet release. Active only when ``deterministic`` is False, which
    ``model.train()`` / ``model.eval()`` / ``nnx.view(deterministic=...)`` set.
    Keys come from the ``rng_collection`` stream (falls back to 'default').
    """

    def __init__(
        self,
        rate: float,
        *,
        deterministic: bool = False,
        rng_collection: str = "dropout",
        rngs: nnx.Rngs,
    ):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        # An RngStream, so the trainer's nnx.reseed reaches it, with a counter that
        # is cheap to bump under a trace (see _CheapUpdateUnderTrace).
        self.rngs = with_traceable_counter(rngs[rng_collection].fork())

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [N, ...] -> x with whole samples zeroed (train) or unchanged (eval)."""
        if self.deterministic or self.rate == 0.0:
            return x
        keep_prob = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep = jax.random.bernoulli(self.rngs(), keep_prob, shape)
        return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))

    def set_view(self, deterministic: bool | None = None):
        """Used by ``nnx.view``: deterministic=True disables dropping."""
        if deterministic is not None:
            self.deterministic = deterministic
