"""Grouped (not depthwise) 3x3 conv on XLA:CPU: lax's grouped conv vs one dense conv
per group, forward + backward; prints one JSON line.

    .venv/bin/python scripts/bench/grouped_conv.py

The shape is ResNeSt-101's stage-2 split-attention conv (radix 2, 128 -> 256
channels) at batch 16, 28x28. Why it matters: `layers.conv2d` picks the per-group
form on CPU.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from gld_jax.models.layers import conv2d  # noqa: E402


def timed(fn, *args, reps=5):
    grad = jax.jit(jax.grad(lambda x, k: jnp.sum(fn(x, k) ** 2), argnums=(0, 1)))
    jax.block_until_ready(grad(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(grad(*args))
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main():
    x = jax.random.normal(jax.random.key(0), (16, 28, 28, 128))
    k = jax.random.normal(jax.random.key(1), (3, 3, 64, 256))
    pads = ((1, 1), (1, 1))
    lax_form = lambda x, k: conv2d(x, k, padding=pads, feature_group_count=2, impl="lax")  # noqa: E731
    ours = lambda x, k: conv2d(x, k, padding=pads, feature_group_count=2)  # noqa: E731
    err = float(np.abs(np.asarray(lax_form(x, k)) - np.asarray(ours(x, k))).max())
    t_lax, t_ours = timed(lax_form, x, k), timed(ours, x, k)
    print(
        json.dumps(
            {
                "bench": "grouped_conv",
                "shape": [16, 28, 28, 128],
                "kernel": [3, 3, 64, 256],
                "groups": 2,
                "backend": jax.default_backend(),
                "lax_grouped_fwd_bwd_s": round(t_lax, 4),
                "per_group_fwd_bwd_s": round(t_ours, 4),
                "speedup": round(t_lax / t_ours, 2),
                "max_abs_diff": err,
            }
        )
    )


if __name__ == "__main__":
    main()
