"""Candidate depthwise-conv forms for layer_micro.py (benchmark only; the chosen one
lives in gld_jax/models/conv.py). Each is f(x, kernel, strides, pads) -> y with the
same function as ``conv2d(..., feature_group_count=C)``; they differ in how the
forward and the two gradients are written for XLA:CPU."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from gld_jax.models.conv import _conv_lax, _depthwise_forward, _depthwise_input_grad, _pad


def _dk_map(x, g, kernel, strides, pads):
    kh, kw, _, c = kernel.shape
    sh, sw = strides
    ho, wo = g.shape[1:3]
    xp = _pad(x, pads)

    def tap_grad(t):
        win = lax.dynamic_slice(
            xp, (0, t // kw, t % kw, 0), (xp.shape[0], sh * (ho - 1) + 1, sw * (wo - 1) + 1, c)
        )[:, ::sh, ::sw]
        return jnp.sum(win * g, axis=(0, 1, 2))

    return lax.map(tap_grad, jnp.arange(kh * kw)).reshape(kh, kw, 1, c)


def _windows(xp, kh, kw, strides, ho, wo):
    sh, sw = strides
    for i in range(kh):
        for j in range(kw):
            yield lax.slice(
                xp,
                (0, i, j, 0),
                (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, xp.shape[3]),
                (1, sh, sw, 1),
            )


def _dk_unrolled(x, g, kernel, strides, pads):
    kh, kw, _, c = kernel.shape
    ho, wo = g.shape[1:3]
    xp = _pad(x, pads)
    rows = [jnp.sum(w * g, axis=(0, 1, 2)) for w in _windows(xp, kh, kw, strides, ho, wo)]
    return jnp.stack(rows).reshape(kh, kw, 1, c)


def _dk_rows(x, g, kernel, strides, pads):
    """Per tap, reduce over (N, Ho) first into [Wo, C] partials, then over Wo: two
    smaller reductions instead of one over all of N*Ho*Wo."""
    kh, kw, _, c = kernel.shape
    ho, wo = g.shape[1:3]
    xp = _pad(x, pads)
    rows = [jnp.einsum("nhwc,nhwc->wc", w, g) for w in _windows(xp, kh, kw, strides, ho, wo)]
    return jnp.stack(rows).sum(axis=1).reshape(kh, kw, 1, c)


def _dk_stacked(x, g, kernel, strides, pads):
    """All taps in one reduction: [T, N, Ho, Wo, C] (never materialised if XLA fuses
    the stacked windows into the reduce) summed over N, Ho, Wo."""
    kh, kw, _, c = kernel.shape
    ho, wo = g.shape[1:3]
    wins = jnp.stack(list(_windows(_pad(x, pads), kh, kw, strides, ho, wo)))
    return jnp.sum(wins * g[None], axis=(1, 2, 3)).reshape(kh, kw, 1, c)


def _dx_autodiff(x, g, kernel, strides, pads):
    _, vjp = jax.vjp(lambda x: _depthwise_forward(x, kernel, strides, pads), x)
    return vjp(g)[0]


def _dx_flipped(x, g, kernel, strides, pads):
    return _depthwise_input_grad(g, kernel, x.shape, strides, pads)


def _dx_lax(x, g, kernel, strides, pads):
    # Same flipped-kernel conv, run by lax.conv (YNNPACK on CPU when it takes it).
    kh, kw = kernel.shape[:2]
    (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
    ho, wo = g.shape[1:3]
    extra_h = x.shape[1] + pt + pb - (sh * (ho - 1) + kh)
    extra_w = x.shape[2] + pl + pr - (sw * (wo - 1) + kw)
    gp = lax.pad(
        g,
        jnp.zeros((), g.dtype),
        (
            (0, 0, 0),
            (kh - 1, kh - 1 + extra_h, sh - 1),
            (kw - 1, kw - 1 + extra_w, sw - 1),
            (0, 0, 0),
        ),
    )
    dxp = _conv_lax(gp, kernel[::-1, ::-1], (1, 1), ((0, 0), (0, 0)), g.shape[-1])
    return dxp[:, pt : pt + x.shape[1], pl : pl + x.shape[2], :]


def _dx_phases(x, g, kernel, strides, pads):
    """Input gradient by output phase: for stride s, dx at rows r = s*q + a (in padded
    coordinates) takes only taps i = a - s*(q - h)..., i.e. taps i = a + s*m. Each phase
    is a small stride-1 correlation of g; phases are interleaved at the end."""
    kh, kw, _, c = kernel.shape
    (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
    if (sh, sw) == (1, 1):
        return _dx_flipped(x, g, kernel, strides, pads)
    n, ho, wo, _ = g.shape
    hp, wp = x.shape[1] + pt + pb, x.shape[2] + pl + pr
    qh, qw = -(-hp // sh), -(-wp // sw)  # rows/cols per phase (padded, rounded up)
    phases = []
    for a in range(sh):
        row = []
        for b in range(sw):
            # xp[s*q + a] gets g[h] * k[i] for i = s*(q-h) + a, i.e. h = q - m, i = a + s*m.
            acc = None
            for mi in range(-(-(kh - a) // sh)):
                for mj in range(-(-(kw - b) // sw)):
                    i, j = a + sh * mi, b + sw * mj
                    # out[q] = g[q - mi] for q in [0, qh): pad g by mi before, crop.
                    pad = ((0, 0, 0), (mi, qh - ho - mi, 0), (mj, qw - wo - mj, 0), (0, 0, 0))
                    gs = lax.pad(g, jnp.zeros((), g.dtype), pad)
                    term = gs * kernel[i, j, 0]
                    acc = term if acc is None else acc + term
            if acc is None:
                acc = jnp.zeros((n, qh, qw, c), g.dtype)
            row.append(acc)
        phases.append(jnp.stack(row, axis=3))  # [n, qh, qw, sw, c]
    full = jnp.stack(phases, axis=2)  # [n, qh, sh, qw, sw, c]
    full = full.reshape(n, qh * sh, qw * sw, c)
    return full[:, pt : pt + x.shape[1], pl : pl + x.shape[2], :]


def make(fwd: str, dx: str, dk: str, barrier: bool):
    dx_fn = {
        "autodiff": _dx_autodiff,
        "flipped": _dx_flipped,
        "lax": _dx_lax,
        "phases": _dx_phases,
    }[dx]
    dk_fn = {"map": _dk_map, "unrolled": _dk_unrolled, "rows": _dk_rows, "stacked": _dk_stacked}[dk]

    def forward(x, kernel, strides, pads):
        if barrier:
            x = lax.optimization_barrier(x)
        if fwd == "lax":
            return _conv_lax(x, kernel, strides, pads, x.shape[-1])
        return _depthwise_forward(x, kernel, strides, pads)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
    def f(x, kernel, strides, pads):
        return forward(x, kernel, strides, pads)

    def f_fwd(x, kernel, strides, pads):
        return forward(x, kernel, strides, pads), (x, kernel)

    def f_bwd(strides, pads, res, g):
        x, kernel = res
        if barrier:
            g = lax.optimization_barrier(g)
        return dx_fn(x, g, kernel, strides, pads), dk_fn(x, g, kernel, strides, pads)

    f.defvjp(f_fwd, f_bwd)
    return f


def _head_layers():
    """gld_jax/models/conv.py as committed (HEAD), for before/after comparisons."""
    import os
    import subprocess
    import types

    repo = os.path.join(os.path.dirname(__file__), "..", "..", "..")
    res = subprocess.run(
        ["git", "show", "HEAD:gld_jax/models/conv.py"], cwd=repo, capture_output=True, text=True
    )
    if res.returncode != 0:
        return None
    mod = types.ModuleType("layers_head")
    exec(compile(res.stdout, "layers_head.py", "exec"), mod.__dict__)
    return mod


_HEAD = _head_layers()

VARIANTS = {
    "cur+barrier": make("shift", "autodiff", "map", True),
    "barrier/flipped/map": make("shift", "flipped", "map", True),
    "barrier/phases/map": make("shift", "phases", "map", True),
    "barrier/autodiff/unrolled": make("shift", "autodiff", "unrolled", True),
    "barrier/autodiff/stacked": make("shift", "autodiff", "stacked", True),
    "barrier/phases/stacked": make("shift", "phases", "stacked", True),
    "lax-fwd/lax-dx/map": make("lax", "lax", "map", True),
}


# 1x1 conv candidates: f(x [N,H,W,Cin], w [1,1,Cin,Cout]) -> [N,H,W,Cout].
def _pw_einsum(x, w):
    return jnp.einsum("nhwc,cd->nhwd", x, w[0, 0])


@jax.custom_vjp
def _pw_custom(x, w):
    return _pw_einsum(x, w)


def _pw_custom_fwd(x, w):
    return _pw_einsum(x, w), (x, w)


def _pw_custom_bwd(res, g):
    # dW contracts over all N*H*W rows of both operands; write it so the operand
    # with fewer channels is the one that would need a transposed copy.
    x, w = res
    cin, cout = w.shape[2:]
    x2 = x.reshape(-1, cin)
    g2 = g.reshape(-1, cout)
    if cin <= cout:
        dw = lax.dot_general(x2.T, g2, (((1,), (0,)), ((), ())))
    else:
        dw = lax.dot_general(g2.T, x2, (((1,), (0,)), ((), ()))).T
    dx = jnp.einsum("nhwd,cd->nhwc", g, w[0, 0])
    return dx, dw.reshape(w.shape)


_pw_custom.defvjp(_pw_custom_fwd, _pw_custom_bwd)

PW_VARIANTS = {"einsum custom dW": _pw_custom}
if _HEAD is not None:
    VARIANTS = {
        "HEAD conv2d einsum_shift": lambda x, w, s, p: _HEAD.conv2d(
            x, w, strides=s, padding=p, feature_group_count=x.shape[-1], impl="einsum_shift"
        ),
        **VARIANTS,
    }


def _pw_matmul(x, w):
    """1x1 conv as one 2-D matmul on [N*H*W, Cin] (autodiff gives dW as one dot)."""
    n, h, wd, cin = x.shape
    return jnp.dot(x.reshape(-1, cin), w[0, 0]).reshape(n, h, wd, -1)


PW_VARIANTS["matmul 2-D"] = _pw_matmul
