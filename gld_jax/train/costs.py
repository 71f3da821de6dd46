"""Compute and activation-memory costs of a model, read off its traced jaxpr.

Nothing is compiled or run: a forward pass is traced once with abstract inputs
(`jax.make_jaxpr` of `jax.vjp`), which gives both the forward's multiply-adds
(convolutions and matrix products, the standard FLOP count) and the residuals
the backward pass keeps alive (the activation memory of training).

Tracing costs the same at any image size, so `trace_forward_costs` traces one
small probe size and `ForwardCosts.at` scales to any size that keeps the same
stride pattern (a multiple of 32 for EfficientNet/ResNeSt, as every recipe size
is): spatial activations [b, h, w, c] and the convolutions producing them grow
with h*w, the pooled tail does not. tests/test_costs.py checks the scaling
against a direct trace and the FLOPs against the papers' published counts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import numpy as np
from jax.extend import core as jex_core


def _conv_flops(eqn) -> tuple[float, tuple[int, ...]]:
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    # Each output element is a dot over (kernel taps x input features per group).
    macs_per_output = math.prod(rhs) // rhs[out_feature_dim]
    return 2.0 * math.prod(out) * macs_per_output, out


def _dot_flops(eqn) -> tuple[float, tuple[int, ...]]:
    out = eqn.outvars[0].aval.shape
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    contracted = math.prod(lhs[d] for d in lhs_contract)
    return 2.0 * math.prod(out) * contracted, out


_COUNTED = {"conv_general_dilated": _conv_flops, "dot_general": _dot_flops}


def _sub_jaxprs(eqn):
    """(jaxpr, repeat count) for every sub-computation of an equation."""
    repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else [value]:
            inner = getattr(item, "jaxpr", item)
            if isinstance(inner, jex_core.Jaxpr):
                yield inner, repeat


def jaxpr_flops(
    jaxpr, is_spatial: Callable[[tuple[int, ...]], bool] = lambda shape: False
) -> tuple[float, float]:
    """(FLOPs of equations whose output `is_spatial`, FLOPs of the rest) for the
    convolutions and matrix products of a (closed) jaxpr, 2 per multiply-add,
    sub-jaxprs included (scan bodies times their length, cond's costliest branch)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    spatial = other = 0.0
    for eqn in jaxpr.eqns:
        counter = _COUNTED.get(eqn.primitive.name)
        if counter is not None:
            flops, out = counter(eqn)
            if is_spatial(out):
                spatial += flops
            else:
                other += flops
            continue
        if eqn.primitive.name == "cond":
            costs = [jaxpr_flops(b, is_spatial) for b in eqn.params["branches"]]
            best = max(costs, key=sum)
            spatial, other = spatial + best[0], other + best[1]
            continue
        for inner, repeat in _sub_jaxprs(eqn):
            s, o = jaxpr_flops(inner, is_spatial)
            spatial, other = spatial + repeat * s, other + repeat * o
    return spatial, other


@dataclasses.dataclass(frozen=True)
class ForwardCosts:
    """Forward-pass costs of a traced probe (batch `batch`, images `size` px).

    flops_*: forward FLOPs (2 per multiply-add) of convs/matmuls; residual_*:
    bytes the backward pass keeps from the forward (inputs and parameters
    excluded). *_spatial parts scale with the image area, *_other do not.
    """

    batch: int
    size: int
    flops_spatial: float
    flops_other: float
    residual_spatial: float
    residual_other: float

    def at(self, size: int, batch: int) -> tuple[float, float]:
        """(forward FLOPs, residual bytes) at `size` px and `batch` images."""
        area = (size / self.size) ** 2
        per = batch / self.batch
        flops = per * (self.flops_spatial * area + self.flops_other)
        residuals = per * (self.residual_spatial * area + self.residual_other)
        return flops, residuals


def _nbytes(aval) -> int:
    return int(math.prod(aval.shape)) * np.dtype(aval.dtype).itemsize


def _traced_residuals(fn: Callable, *args):
    """(forward jaxpr, distinct residual vars) of `jax.vjp(fn, *args)`: the
    values the backward pass keeps, minus the inputs themselves."""
    closed = jax.make_jaxpr(lambda *a: jax.vjp(fn, *a))(*args)
    jaxpr = closed.jaxpr
    num_outputs = len(jax.tree.leaves(jax.eval_shape(fn, *args)))
    inputs = set(jaxpr.invars) | set(jaxpr.constvars)
    residuals = {}  # insertion-ordered set: a value kept twice is counted once
    for var in jaxpr.outvars[num_outputs:]:  # the vjp closure's leaves
        if isinstance(var, jex_core.Var) and var not in inputs:
            residuals[var] = None
    return jaxpr, list(residuals)


def residual_bytes(fn: Callable, *args) -> int:
    """Bytes of the residuals `jax.vjp(fn, *args)` keeps for the backward pass
    (args may be abstract: jax.ShapeDtypeStruct)."""
    _, residuals = _traced_residuals(fn, *args)
    return sum(_nbytes(v.aval) for v in residuals)


def trace_forward_costs(fn: Callable, params, batch: int, size: int) -> ForwardCosts:
    """Traces `fn(params, images)` on abstract float images [batch, size, size, 3].

    Pick `batch` even and `size` a multiple of 32 above 32: a value [batch, h, h, ...]
    with h > 1 counts as a spatial activation (kernels have odd sizes, pooled
    maps are 1x1).
    """
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jax.numpy.float32)

    def is_spatial(shape) -> bool:
        return len(shape) >= 4 and shape[0] == batch and shape[1] == shape[2] > 1

    jaxpr, residuals = _traced_residuals(fn, params, images)
    res_spatial = sum(_nbytes(v.aval) for v in residuals if is_spatial(v.aval.shape))
    res_other = sum(_nbytes(v.aval) for v in residuals if not is_spatial(v.aval.shape))
    flops_spatial, flops_other = jaxpr_flops(jaxpr, is_spatial)
    return ForwardCosts(batch, size, flops_spatial, flops_other, res_spatial, res_other)
