"""Lane-dense activations for EfficientNet's first stages on TPUs.

A TPU keeps an array's last dimension in 128-lane tiles, so the first stages'
24-48 channels (and 144-288 once expanded) occupy 128 or 256 lanes: at 544 px
most of the bytes those layers move are padding. Folding W into the channels,
[N, H, W, C] -> [N, H, W / f, f * C], fills the lanes. The fold is *strided*:
lane group r holds the columns r * W/f .. (r + 1) * W/f - 1, so a pixel's W
neighbours stay its neighbours along W/f and a depthwise convolution stays one
depthwise convolution over the f * C lanes; only the edge columns of each
group take their neighbour from the next group (a shift of one column by C
lanes). A pointwise convolution becomes a block-diagonal matmul (f times its
FLOPs, which these byte-bound layers can spare), BatchNorm's statistics are
summed per lane and then over the f groups. The numbers are those of the plain
layers, summed in another order.

Compiled for a v3 core, one block of 40 -> 24 channels at 272 px, forward and
backward, moves 0.63x the bytes with f = 8 (scripts/bench/lane_dense_probe.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gld_jax.models.conv import same_padding

FOLD = 8  # 40, 24, 32, 144 and 192 channels -> 320, 192, 256, 1152, 1536 lanes


def fold(x: jax.Array, f: int) -> jax.Array:
    """[N, H, W, C] -> [N, H, W / f, f * C]; lane group r holds the columns
    r * W/f .. (r + 1) * W/f - 1."""
    n, h, w, c = x.shape
    return x.reshape(n, h, f, w // f, c).transpose(0, 1, 3, 2, 4).reshape(n, h, w // f, f * c)


def unfold(xs: jax.Array, f: int) -> jax.Array:
    """The inverse of `fold`: [N, H, W / f, f * C] -> [N, H, W, C]."""
    n, h, wf, fc = xs.shape
    c = fc // f
    return xs.reshape(n, h, wf, f, c).transpose(0, 1, 3, 2, 4).reshape(n, h, wf * f, c)


def per_channel(v: jax.Array, f: int) -> jax.Array:
    """[..., f * C] per-lane sums -> [..., C] per-channel sums (f = 1: v)."""
    if f == 1:
        return v
    return v.reshape(*v.shape[:-1], f, v.shape[-1] // f).sum(-2)


def per_lane(v: jax.Array, f: int) -> jax.Array:
    """[..., C] -> [..., f * C], each channel's value in its f lanes (f = 1: v)."""
    if f == 1:
        return v
    return jnp.tile(v, (1,) * (v.ndim - 1) + (f,))


def spatial_mean(x: jax.Array, f: int) -> jax.Array:
    """[N, H, W/f, f * C] -> [N, 1, 1, C], the mean over H and W (squeeze-excite's
    pool) in x's dtype; f = 1: the plain [N, H, W, C] mean."""
    if f == 1:
        return jnp.mean(x, axis=(1, 2), keepdims=True)
    lanes = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
    return (per_channel(lanes, f) / f).astype(x.dtype)


def pointwise(xs: jax.Array, kernel: jax.Array, f: int) -> jax.Array:
    """A 1x1 convolution, kernel [1, 1, Cin, Cout], on folded [N, H, W/f, f*Cin]
    -> [N, H, W/f, f*Cout] in the promoted dtype (a block-diagonal matmul)."""
    k = kernel[0, 0]
    return jnp.einsum("nhwc,cd->nhwd", xs, jnp.kron(jnp.eye(f, dtype=k.dtype), k))


def depthwise(xs: jax.Array, kernel: jax.Array, f: int, stride: int) -> jax.Array:
    """A depthwise convolution with TF "SAME" padding, kernel [kh, 3, 1, C],
    stride 1 or 2, on folded [N, H, W/f, f*C]. With stride 2, W/f must be even
    (the output is folded alike, W/(2f) columns per group)."""
    n, h, wf, fc = xs.shape
    kh, kw, _, c = kernel.shape
    if kw != 3 or fc != f * c or (stride == 2 and wf % 2):
        raise ValueError(f"no folded depthwise for {xs.shape}, kernel {kernel.shape}, s={stride}")
    lo, hi = same_padding(wf * f, kw, stride)
    zeros = jnp.zeros_like(xs[:, :, 0, :c])
    cols = [xs]
    if lo:  # column 0 of group r takes x[w - 1] from group r - 1's last column
        cols.insert(0, jnp.concatenate([zeros, xs[:, :, -1, :-c]], axis=-1)[:, :, None])
    if hi:  # the last column of group r takes x[w + 1] from group r + 1's first
        cols.append(jnp.concatenate([xs[:, :, 0, c:], zeros], axis=-1)[:, :, None])
    padded = jnp.concatenate(cols, axis=2) if len(cols) > 1 else xs
    return jax.lax.conv_general_dilated(
        padded,
        per_lane(kernel, f),
        (stride, stride),
        (same_padding(h, kh, stride), (0, 0)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=fc,
    )
