"""BatchNorm for the backbones: flax's, with a hand-written train-mode forward and
gradient (statistics in float32, closed-form backward) on the backends where it
was measured to move fewer bytes or run faster, and the one factory both
backbones build it with (`batch_norm`)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from gld_jax.models import lane_dense
from gld_jax.models.conv import trace_backend
from gld_jax.models.traced import TracedUpdateBatchStat


def _bn_stats(
    x: jax.Array, axes: tuple[int, ...], one_pass: bool = False
) -> tuple[jax.Array, jax.Array]:
    if one_pass:
        # E[x^2] - E[x]^2: both sums in one read of x (XLA fuses the two
        # reductions), at the cost of cancellation when |mean| >> std.
        mean = jnp.mean(x, axes)
        return mean, jnp.maximum(jnp.mean(lax.square(x), axes) - lax.square(mean), 0.0)
    # Two-pass variance, as flax's use_fast_variance=False: E[(x - E[x])^2].
    mean = jnp.mean(x, axes)
    var = jnp.mean(lax.square(x - mean), axes)
    return mean, var


def _folded_stats(x32: jax.Array, f: int, one_pass: bool) -> tuple[jax.Array, jax.Array]:
    # x32 [..., f * C] lane-dense (models/lane_dense.py): sums per lane, then per channel.
    axes = tuple(range(x32.ndim - 1))
    m = math.prod(x32.shape[:-1]) * f
    mean = lane_dense.per_channel(jnp.sum(x32, axes), f) / m
    if one_pass:
        square = lane_dense.per_channel(jnp.sum(lax.square(x32), axes), f) / m
        return mean, jnp.maximum(square - lax.square(mean), 0.0)
    centred = x32 - lane_dense.per_lane(mean, f)
    return mean, lane_dense.per_channel(jnp.sum(lax.square(centred), axes), f) / m


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _bn_train(x, scale, bias, epsilon, one_pass, fold=1):
    """Train-mode batch norm over all axes but the last, in float32 whatever
    x's dtype (bfloat16 compute), y in x's dtype. fold > 1: x is lane-dense,
    [..., fold * C] (models/lane_dense.py), with statistics per channel C.

    Returns (y, batch mean, batch variance); y = (x - mean) * (rsqrt(var + eps) *
    scale) + bias, the same expression flax's BatchNorm evaluates."""
    y, mean, var, _ = _bn_train_forward(x, scale, bias, epsilon, one_pass, fold)
    return y, mean, var


def _bn_train_forward(x, scale, bias, epsilon, one_pass, fold=1):
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    if fold > 1:
        mean, var = _folded_stats(x32, fold, one_pass)
    else:
        mean, var = _bn_stats(x32, axes, one_pass)
    inv = lax.rsqrt(var + epsilon)
    lanes = functools.partial(lane_dense.per_lane, f=fold)  # the identity for fold 1
    y = (x32 - lanes(mean)) * lanes(inv * scale) + lanes(bias)
    return y.astype(x.dtype), mean, var, inv


def _bn_train_fwd(x, scale, bias, epsilon, one_pass, fold=1):
    y, mean, var, inv = _bn_train_forward(x, scale, bias, epsilon, one_pass, fold)
    return (y, mean, var), (x, scale, mean, inv)


def _bn_train_bwd(epsilon, one_pass, fold, residuals, cotangents):
    # The closed form: with xhat = (x - mean) * inv over M = N*H*W rows,
    #   dx = scale * inv * (g - mean(g) - xhat * mean(g * xhat)),
    # plus the (usually zero) cotangents of the returned batch statistics. Autodiff
    # of the two-pass statistics gives the same values with more passes.
    x, scale, mean, inv = residuals
    g, g_mean, g_var = cotangents
    g = g.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    m = math.prod(x.shape[:-1]) * fold
    # Lane-dense x: per-lane sums summed per channel, per-channel values per lane
    # (both the identity for fold 1).
    lanes = functools.partial(lane_dense.per_lane, f=fold)
    channels = functools.partial(lane_dense.per_channel, f=fold)
    xc = x.astype(jnp.float32) - lanes(mean)
    xhat = xc * lanes(inv)
    dbias = channels(jnp.sum(g, axes))
    dscale = channels(jnp.sum(g * xhat, axes))
    dx = lanes(scale * inv) * (g - lanes(dbias / m) - xhat * lanes(dscale / m))
    dx = dx + lanes(g_mean / m) + xc * lanes(g_var * 2.0 / m)
    return dx.astype(x.dtype), dscale, dbias


_bn_train.defvjp(_bn_train_fwd, _bn_train_bwd)


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` (same params, batch stats and modes) whose train-mode forward
    and gradient are written out by hand on the backends of ``fused_backends``
    (float32 or bfloat16 inputs, statistics in float32, no mask / axis_name);
    elsewhere (eval mode, other backends and dtypes) it is flax's.
    ``hand_written_grad=False`` (argument, or the attribute on the class or an
    instance) turns that off.
    Batch statistics are ``TracedUpdateBatchStat``s, cheap to update under a trace.
    """

    hand_written_grad: bool = True
    # Where the hand-written forward and gradient replace flax's: where they
    # were measured to pay. XLA:CPU; XLA:GPU (bfloat16 B0 step on an H200:
    # 6,241 against 5,046 images/s with flax's); XLA:TPU (effb3 on a v3-32,
    # compiled: 10.3 -> 9.4 GB per step at 256 px, BENCHMARKS.md).
    fused_backends: tuple[str, ...] = ("cpu", "gpu", "tpu")
    # Where the batch statistics take one read of x (E[x^2] - E[x]^2 in float32)
    # instead of two: XLA:TPU (9.4 -> 9.1 GB at 256 px, 18.96 -> 17.0 GB at
    # 544 px). Elsewhere the two-pass form, whose numbers the demo's records are.
    one_pass_backends: tuple[str, ...] = ("tpu",)

    def __init__(self, *args, hand_written_grad: bool | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if hand_written_grad is not None:
            self.hand_written_grad = hand_written_grad
        self.mean = TracedUpdateBatchStat(self.mean.get_value())
        self.var = TracedUpdateBatchStat(self.var.get_value())

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None, fold: int = 1):
        """fold > 1: x is lane-dense, [..., fold * features] (models/lane_dense.py)."""
        use_ra = self.use_running_average if use_running_average is None else use_running_average
        fast = (
            self.hand_written_grad
            and use_ra is not None
            and not use_ra
            and mask is None
            and self.axis_name is None
            and self.axis in (-1, x.ndim - 1)
            and not self.use_fast_variance
            and self.scale is not None
            and self.bias is not None
            and x.dtype in (jnp.float32, jnp.bfloat16)
            and (self.dtype is None or jnp.dtype(self.dtype) == x.dtype)
            and trace_backend() in self.fused_backends
        )
        if not fast:
            if fold > 1:  # flax's on the plain layout
                y = super().__call__(lane_dense.unfold(x, fold), use_running_average, mask=mask)
                return lane_dense.fold(y, fold)
            return super().__call__(x, use_running_average, mask=mask)
        one_pass = trace_backend() in self.one_pass_backends
        y, mean, var = _bn_train(x, self.scale[...], self.bias[...], self.epsilon, one_pass, fold)
        m = self.momentum
        self.mean[...] = lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
        self.var[...] = lax.stop_gradient(m * self.var[...] + (1 - m) * var)
        return y


def batch_norm(
    features: int,
    *,
    momentum: float,
    epsilon: float,
    dtype,
    rngs: nnx.Rngs,
    hand_written_grad: bool = True,
) -> BatchNorm:
    """The backbones' BatchNorm over the channel axis: two-pass variance
    (E[x^2] - E[x]^2 cancels badly when |mean| >> std, and the reference
    implementations compute it in two passes too), flax's momentum convention
    (new = momentum * old + (1 - momentum) * batch)."""
    return BatchNorm(
        features,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        use_fast_variance=False,
        hand_written_grad=hand_written_grad,
        rngs=rngs,
    )
