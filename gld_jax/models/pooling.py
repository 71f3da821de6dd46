"""Generalised-mean (GeM) pooling (Radenovic et al. 2018), the recipe's global pool."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def gem(x: jax.Array, p: jax.Array | float, eps: float = 1e-6) -> jax.Array:
    """GeM over H, W: (mean_hw clamp(x, eps)^p)^(1/p), in float32.

    Args:
      x: [N, H, W, C] features (any float dtype).
      p: the exponent, scalar or shape (1,); p=1 is average, p->inf max pooling.
      eps: lower clamp, keeps x^p and its gradient finite for x <= 0.

    Returns:
      [N, C] float32.
    """
    p = jnp.asarray(p, jnp.float32).reshape(())
    x = jnp.maximum(x.astype(jnp.float32), eps)
    return jnp.mean(x**p, axis=(1, 2)) ** (1.0 / p)


class GeM(nnx.Module):
    """GeM pooling with a learnable (``nnx.Param`` of shape (1,)) or fixed exponent p."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True):
        # Shape (1,) as the recipe's PyTorch ``nn.Parameter(torch.ones(1) * p)``.
        self.p = nnx.Param(jnp.full((1,), p, jnp.float32)) if learnable else float(p)
        self.eps = eps
        self.learnable = learnable

    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, H, W, C] -> [N, C] float32."""
        p = self.p[...] if self.learnable else self.p
        return gem(x, p, self.eps)
