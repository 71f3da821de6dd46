"""Would lane-dense activations cut a TPU train step's tile padding? A probe on
one early EfficientNet block, compiled for one TPU core by XLA:TPU (no TPU
needed), forward and backward, in two forms that compute the same numbers:

- plain: activations [N, H, W, C]; a TPU keeps C in 128-lane tiles, so 40 or 24
  channels take 128 lanes;
- folded: [N, H, W / f, f * C], W folded into the lanes (f * C a multiple of
  128); the depthwise 3x3 convolution becomes lane shifts, the pointwise one a
  block-diagonal matmul (f times its FLOPs), BatchNorm's statistics per lane,
  folded over f.

The block is a depthwise 3x3 convolution + BatchNorm (batch statistics) +
swish, then a pointwise convolution + BatchNorm, as in EfficientNet's first
stage. Prints, per form, XLA's bytes accessed, the tile padding in them
(gld_jax.train.traffic) and the FLOPs; checks on the CPU first that the two
forms agree (loss and gradients).

    python scripts/bench/lane_dense_probe.py --size 272 --cin 40 --cout 24 --fold 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gld_jax.models import lane_dense  # noqa: E402

EPS = 1e-3


def _bn(y, axes, fold_c=None):
    """Batch-statistics BatchNorm without affine parameters, float32 stats.
    fold_c: for the folded form, the channel count C of the lanes f * C."""
    y32 = y.astype(jnp.float32)
    s1, s2 = jnp.sum(y32, axes), jnp.sum(y32 * y32, axes)
    count = np.prod([y.shape[a] for a in axes])
    if fold_c is not None:  # per lane -> per channel, and back
        f = y.shape[-1] // fold_c
        s1 = jnp.tile(s1.reshape(f, fold_c).sum(0), f)
        s2 = jnp.tile(s2.reshape(f, fold_c).sum(0), f)
        count *= f
    mean = s1 / count
    var = s2 / count - mean * mean
    return ((y32 - mean) * jax.lax.rsqrt(var + EPS)).astype(y.dtype)


def plain_block(x, k, w):
    """x [N, H, W, C] bf16, k [3, 3, C] f32, w [C, C2] f32 -> loss."""
    c = x.shape[-1]
    y = jax.lax.conv_general_dilated(
        x,
        k.astype(x.dtype)[:, :, None, :],
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
    )
    y = jax.nn.swish(_bn(y, (0, 1, 2)))
    z = _bn(jnp.einsum("nhwc,cd->nhwd", y, w.astype(y.dtype)), (0, 1, 2))
    return jnp.sum(jnp.square(z.astype(jnp.float32)))


def _shift_w(xf, j, c):
    """x[w + j] in the folded form (zeros outside), j in {-1, 1}."""
    zeros = jnp.zeros_like(xf[:, :, :1, :c])
    if j == 1:  # the next pixel: lanes move down by C, the next column's first C come in
        carry = jnp.concatenate([xf[:, :, 1:, :c], zeros], axis=2)
        return jnp.concatenate([xf[..., c:], carry], axis=-1)
    carry = jnp.concatenate([zeros, xf[:, :, :-1, -c:]], axis=2)
    return jnp.concatenate([carry, xf[..., :-c]], axis=-1)


def _shift_h(x, i):
    """x[h + i] (zeros outside), i in {-1, 0, 1}."""
    if i == 0:
        return x
    zeros = jnp.zeros_like(x[:, :1])
    if i == 1:
        return jnp.concatenate([x[:, 1:], zeros], axis=1)
    return jnp.concatenate([zeros, x[:, :-1]], axis=1)


def _depthwise_taps(xf, k, c):
    """The folded depthwise 3x3 convolution as nine shifted products."""
    f = xf.shape[-1] // c
    cols = {0: xf, -1: _shift_w(xf, -1, c), 1: _shift_w(xf, 1, c)}
    y = jnp.zeros(xf.shape, jnp.float32)
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            tap = jnp.tile(k[i + 1, j + 1], f)
            y = y + _shift_h(cols[j], i).astype(jnp.float32) * tap
    return y.astype(xf.dtype)


def _depthwise_columns(xf, k, c):
    """The folded depthwise 3x3 convolution as three depthwise 3x1 convolutions
    over the lanes (XLA's own convolution takes the H taps), one per W shift."""
    f = xf.shape[-1] // c
    y = None
    for j in (-1, 0, 1):
        col = xf if j == 0 else _shift_w(xf, j, c)
        kernel = jnp.tile(k[:, j + 1], (1, f)).astype(xf.dtype)[:, None, None, :]
        part = jax.lax.conv_general_dilated(
            col,
            kernel,
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=f * c,
        )
        y = part if y is None else y + part
    return y


def _depthwise_strided(xs, k, c):
    """The depthwise 3x3 convolution on the strided fold, as the model runs it
    (gld_jax.models.lane_dense.depthwise): one depthwise convolution over the
    f * C lanes, each group's edge column fed from the next group."""
    return lane_dense.depthwise(xs, k.astype(xs.dtype)[:, :, None, :], xs.shape[-1] // c, 1)


DEPTHWISE = {
    "taps": _depthwise_taps,
    "columns": _depthwise_columns,
    "strided": _depthwise_strided,
}


def folded_block(xf, k, w, c, depthwise="taps"):
    """xf [N, H, W / f, f * C] bf16 (x folded), same k and w -> the same loss."""
    f = xf.shape[-1] // c
    y = jax.nn.swish(_bn(DEPTHWISE[depthwise](xf, k, c), (0, 1, 2), fold_c=c))
    wf = jnp.kron(jnp.eye(f, dtype=w.dtype), w).astype(y.dtype)
    z = _bn(jnp.einsum("nhwc,cd->nhwd", y, wf), (0, 1, 2), fold_c=w.shape[1])
    return jnp.sum(jnp.square(z.astype(jnp.float32)))


def fold(x, f, strided=False):
    """[N, H, W, C] -> [N, H, W / f, f * C]: lane group r holds the columns
    r, f + r, 2f + r ... (contiguous fold, a free reshape) or, strided, the
    columns r * W/f .. (r + 1) * W/f - 1 (lane_dense.fold, a transpose)."""
    if strided:
        return lane_dense.fold(x, f)
    n, h, w, c = x.shape
    return x.reshape(n, h, w // f, f * c)


def check_equal(cin, cout, f, size=32, batch=2) -> dict:
    """Loss and gradients of both forms on the CPU, float32."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, size, size, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(cin, cout)) / np.sqrt(cin), jnp.float32)
    lp, (gxp, gkp, gwp) = jax.value_and_grad(plain_block, (0, 1, 2))(x, k, w)

    def rel(a, b):
        return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))

    out = {}
    for form in DEPTHWISE:
        strided = form == "strided"
        lf, (gxf, gkf, gwf) = jax.value_and_grad(
            lambda x, k, w, form=form: folded_block(x, k, w, cin, form), (0, 1, 2)
        )(fold(x, f, strided), k, w)
        grads = (rel(gxf, fold(gxp, f, strided)), rel(gkf, gkp), rel(gwf, gwp))
        out[form] = {"loss": rel(lf, lp), "grads": max(grads)}
    return out


def compiled_figures(fn, args, device) -> dict:
    from gld_jax.train import traffic

    sharding = jax.sharding.SingleDeviceSharding(device)
    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in args]
    lowered = jax.jit(jax.value_and_grad(fn, (0, 1, 2))).lower(*shapes)
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    ops = traffic.hlo_traffic(compiled.as_text())
    return {
        "gb": round(float(cost.get("bytes accessed", 0.0)) / 1e9, 4),
        "padding_gb": round(traffic.tile_padding_bytes(ops) / 1e9, 4),
        "gflop": round(float(cost.get("flops", 0.0)) / 1e9, 2),
        "temp_gb": round(compiled.memory_analysis().temp_size_in_bytes / 1e9, 4),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=272, help="H = W of the block's input")
    p.add_argument("--batch", type=int, default=4, help="images per core")
    p.add_argument("--cin", type=int, default=40)
    p.add_argument("--cout", type=int, default=24)
    p.add_argument("--fold", type=int, default=16)
    p.add_argument("--topology", default="v3:2x2")
    a = p.parse_args(argv)
    if a.size % a.fold:
        print(f"error: --fold {a.fold} does not divide --size {a.size}", file=sys.stderr)
        return 2
    row = {"size": a.size, "batch": a.batch, "cin": a.cin, "cout": a.cout, "fold": a.fold}
    with jax.default_device(jax.devices("cpu")[0]):
        row["cpu_relative_difference"] = check_equal(a.cin, a.cout, a.fold)
    from gld_jax.train import aot

    device = aot.topology_devices(a.topology)[0]
    x = jax.ShapeDtypeStruct((a.batch, a.size, a.size, a.cin), jnp.bfloat16)
    xf = jax.ShapeDtypeStruct((a.batch, a.size, a.size // a.fold, a.fold * a.cin), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((3, 3, a.cin), jnp.float32)
    w = jax.ShapeDtypeStruct((a.cin, a.cout), jnp.float32)
    row["plain"] = compiled_figures(plain_block, (x, k, w), device)
    for form in DEPTHWISE:
        row[f"folded_{form}"] = compiled_figures(
            lambda xf, k, w, form=form: folded_block(xf, k, w, a.cin, form), (xf, k, w), device
        )
        row[f"folded_{form}"]["over_plain"] = round(
            row[f"folded_{form}"]["gb"] / row["plain"]["gb"], 3
        )
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
