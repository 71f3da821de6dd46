"""The eval resize in JAX, for programs that run without TensorFlow.

The twin of `gld_jax.data.augment.resize_square` (tf.image.resize, bilinear,
antialiased, rounded and clipped to uint8): `jax.image.resize` with
`antialias=True` computes the same triangle-kernel weights as TF's
ScaleAndTranslate. The float results agree to about 1e-4 (summation order),
so a few pixels per image round the other way (by 1). It accepts symbolic
image sizes, so one exported function takes an image of any size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def resize_square(image: jax.Array, size: int) -> jax.Array:
    """uint8 [H, W, C] -> uint8 [size, size, C], bilinear with antialiasing."""
    resized = jax.image.resize(
        image.astype(jnp.float32), (size, size, image.shape[-1]), "linear", antialias=True
    )
    return jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)
