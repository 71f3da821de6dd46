"""Per-layer forward+backward microbenchmarks on XLA:CPU at EfficientNet-B0 shapes.

    flock /tmp/gldjax-heavy.lock nice -n 5 .venv/bin/python scripts/experiments/layer_micro.py \
        --which depthwise --batch_size 32 --image_size 128

For each layer shape of EfficientNet-B0 at --image_size, times jit(value_and_grad)
of sum(f(x, w) * r) (r a fixed random cotangent) for each candidate form of the
layer, and prints ms per call (median of --reps) and the sum over the network's
layers. ``--which``: depthwise (the kxk depthwise convs, by conv2d impl),
pointwise (the 1x1 convs), bn (train-mode BatchNorm + swish), or all.
Set XLA_FLAGS in the environment to compare compiler options.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from gld_jax.models import layers  # noqa: E402
from gld_jax.models.efficientnet import block_specs  # noqa: E402


def b0_shapes(image_size: int):
    """[(name, H, W, C_expanded, k, stride, C_in, C_out)] of B0's blocks."""
    rows, size = [], -(-image_size // 2)
    for s in block_specs(1.0, 1.0, 0.0):
        c = s.filters_in * s.expand_ratio
        rows.append((s.name, size, size, c, s.kernel_size, s.strides, s.filters_in, s.filters_out))
        size = -(-size // s.strides)
    return rows


def _time(fn, args, reps):
    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3


def _fwd_bwd(f):
    def loss(x, w, r):
        return jnp.sum(f(x, w) * r)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _bind_variant(wrap, fn):
    def make(s, p):
        return wrap(lambda x, w: fn(x, w, (s, s), p))

    return make


def depthwise_candidates():
    """name -> make(stride, pads) -> f(x, w). Each wraps the conv in elementwise ops
    (swish before and after, as in the MBConv block), since XLA fuses those into the
    conv's taps and that decides the cost."""
    from scripts.experiments.helpers import dw_variants

    def wrap(conv):
        return lambda x, w: jax.nn.swish(conv(jax.nn.swish(x * 1.1 + 0.1), w))

    def impl(name):
        return lambda s, p: wrap(
            lambda x, w: layers.conv2d(
                x, w, strides=s, padding=p, feature_group_count=x.shape[-1], impl=name
            )
        )

    cands = {"conv2d einsum_shift (working tree)": impl("einsum_shift"), "conv2d lax": impl("lax")}
    for name, fn in dw_variants.VARIANTS.items():
        cands[name] = _bind_variant(wrap, fn)
    return cands


def run_depthwise(args, rng):
    rows = b0_shapes(args.image_size)
    cands = depthwise_candidates()
    if args.only:
        cands = {k: v for k, v in cands.items() if any(o in k for o in args.only.split(","))}
    totals = dict.fromkeys(cands, 0.0)
    out = []
    for name, h, w, c, k, s, _, _ in rows:
        x = jnp.asarray(rng.standard_normal((args.batch_size, h, w, c), np.float32))
        kern = jnp.asarray(rng.standard_normal((k, k, 1, c), np.float32) * 0.1)
        pads = layers.resolve_padding("SAME", (h, w), (k, k), (s, s))
        ho, wo = -(-h // s), -(-w // s)
        r = jnp.asarray(rng.standard_normal((args.batch_size, ho, wo, c), np.float32))
        row = {"layer": name, "shape": [args.batch_size, h, w, c], "k": k, "s": s}
        for cname, make in cands.items():
            ms = _time(_fwd_bwd(make(s, pads)), (x, kern, r), args.reps)
            row[cname] = round(ms, 2)
            totals[cname] += ms
        out.append(row)
        print(json.dumps(row), flush=True)
    return out, totals


def _swish_after(conv, x, w):
    return jax.nn.swish(conv(x, w))


def run_pointwise(args, rng):
    rows = b0_shapes(args.image_size)
    from scripts.experiments.helpers import dw_variants

    cands = {
        "einsum": lambda x, w: layers.conv2d(x, w, impl="einsum_shift"),
        "lax.conv": lambda x, w: layers.conv2d(x, w, impl="lax"),
    }
    cands.update(dw_variants.PW_VARIANTS)
    if args.only:
        cands = {k: v for k, v in cands.items() if any(o in k for o in args.only.split(","))}
    totals = dict.fromkeys(cands, 0.0)
    out = []
    shapes = []
    for name, h, w, c, _, s, cin, cout in rows:
        if c != cin:
            shapes.append((name + " expand", h, w, cin, c))
        ho, wo = -(-h // s), -(-w // s)
        shapes.append((name + " project", ho, wo, c, cout))
    for name, h, w, cin, cout in shapes:
        x = jnp.asarray(rng.standard_normal((args.batch_size, h, w, cin), np.float32))
        kern = jnp.asarray(rng.standard_normal((1, 1, cin, cout), np.float32) * 0.1)
        r = jnp.asarray(rng.standard_normal((args.batch_size, h, w, cout), np.float32))
        row = {"layer": name, "shape": [args.batch_size, h, w, cin, cout]}
        for cname, conv in cands.items():
            # swish after, as BN + swish follow each 1x1 conv: XLA fuses it into dW's operands.
            f = functools.partial(_swish_after, conv)
            ms = _time(_fwd_bwd(f), (x, kern, r), args.reps)
            row[cname] = round(ms, 2)
            totals[cname] += ms
        out.append(row)
        print(json.dumps(row), flush=True)
    return out, totals


def run_bn(args, rng):
    """Train-mode BN (batch stats) + swish, fwd+bwd, flax two-pass vs alternatives."""
    from flax import nnx

    from gld_jax.models.efficientnet import _bn

    rows = b0_shapes(args.image_size)
    totals: dict[str, float] = {}
    out = []
    for name, h, w, c, _, s, _, _ in rows:
        ho, wo = -(-h // s), -(-w // s)
        x = jnp.asarray(rng.standard_normal((args.batch_size, ho, wo, c), np.float32))
        r = jnp.asarray(rng.standard_normal((args.batch_size, ho, wo, c), np.float32))
        bn = _bn(c, jnp.float32, nnx.Rngs(0))
        gd, st = nnx.split(bn)

        def f(x, scale, gd=gd, st=st):
            m = nnx.merge(gd, st)
            m.scale.value = scale
            return jax.nn.swish(m(x))

        row = {"layer": name, "shape": [args.batch_size, ho, wo, c]}
        ms = _time(_fwd_bwd(f), (x, jnp.ones((c,)), r), args.reps)
        row["bn+swish"] = round(ms, 2)
        totals["bn+swish"] = totals.get("bn+swish", 0.0) + ms
        out.append(row)
        print(json.dumps(row), flush=True)
    return out, totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--which", default="depthwise", choices=["depthwise", "pointwise", "bn", "all"])
    ap.add_argument("--only", default="", help="comma-separated substrings of candidate names")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--image_size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    result = {
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "batch_size": args.batch_size,
        "image_size": args.image_size,
    }
    for which, fn in (("depthwise", run_depthwise), ("pointwise", run_pointwise), ("bn", run_bn)):
        if args.which in (which, "all"):
            rows, totals = fn(args, rng)
            result[which] = {"rows": rows, "total_ms": {k: round(v, 1) for k, v in totals.items()}}
            print(
                f"{which} total ms (fwd+bwd, all B0 layers):",
                json.dumps(result[which]["total_ms"]),
                flush=True,
            )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
