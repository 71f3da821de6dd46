"""A small Sub-center head problem (embeddings, centres, labels, margins) and its
loss + gradients, shared by test_sharded_head.py, test_multihost.py and its worker."""

import jax
import jax.numpy as jnp
import numpy as np

from gld_jax.losses import dynamic_margins, sub_center_arcface_loss

N, C, K, D = 16, 64, 3, 32


def problem():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(N, D)).astype(np.float32)
    centers = rng.normal(size=(C, K, D)).astype(np.float32)
    labels = rng.integers(0, C, N).astype(np.int32)
    margins = np.asarray(dynamic_margins(rng.integers(1, 50, C)), np.float32)
    return emb, centers, labels, margins


def loss_and_grads(emb, centers, labels, margins):
    def f(e, c):
        return jnp.mean(sub_center_arcface_loss(e, c, labels, margins, 30.0))

    return jax.value_and_grad(f, argnums=(0, 1))(emb, centers)
