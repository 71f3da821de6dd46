"""Convolution layers whose arithmetic form is picked per backend.

(~480 lines: each form with its hand-written gradient sits beside the others it must equal.)

On XLA:CPU the way a convolution is written decides its speed (BENCHMARKS.md,
"CPU train step": depthwise 3x3 through ``lax.conv`` with ``feature_group_count`` is ~3.4x slower
than a sum of shifted multiplies, and a 1x1 conv ~3.4x slower than an einsum).
On GPU/TPU ``lax.conv`` maps onto cuDNN / the MXU and is the right form. All
forms compute the same function; ``conv2d`` picks one, the modules hold params.

Layouts: activations NHWC, kernels HWIO ``[kh, kw, Cin // groups, Cout]``.
"""

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

Padding = str | Sequence[tuple[int, int]]
ConvImpl = Literal["auto", "lax", "einsum_shift"]

_IMPLS = ("auto", "lax", "einsum_shift")

# The backend a trace is for: jax.default_backend() unless `tracing_for` says
# otherwise (compiling for a TPU slice from a CPU machine must pick TPU forms).
_TRACE_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gld_jax_trace_backend", default=None
)


def trace_backend() -> str:
    """The platform ("cpu", "gpu", "tpu") whose layer forms a trace uses now."""
    return _TRACE_BACKEND.get() or jax.default_backend()


@contextlib.contextmanager
def tracing_for(platform: str):
    """Within the block, layers trace the forms of `platform`, whatever device
    this process runs on (ahead-of-time compilation for another backend)."""
    token = _TRACE_BACKEND.set(platform)
    try:
        yield
    finally:
        _TRACE_BACKEND.reset(token)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding of one spatial dim: (pad_before, pad_after) in pixels.

    Output size is ceil(size / stride); the odd pixel of padding goes after
    (bottom/right), as in TensorFlow and Keras ``correct_pad`` for stride 2.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2)


def resolve_padding(
    padding: Padding, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """Explicit ((top, bottom), (left, right)) pads for "SAME", "VALID" or explicit pairs."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "SAME":
            dims = zip(spatial, kernel, strides, strict=True)
            return tuple(same_padding(n, k, s) for n, k, s in dims)
        if mode == "VALID":
            return ((0, 0),) * len(spatial)
        raise ValueError(f"padding must be 'SAME', 'VALID' or pairs, got {padding!r}")
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pads) != len(spatial):
        raise ValueError(f"need {len(spatial)} (lo, hi) pairs, got {padding!r}")
    return pads


def _pad(x: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    return jnp.pad(x, ((0, 0), *pads, (0, 0)))


def _taps(xp: jax.Array, kh: int, kw: int, strides: tuple[int, int]):
    """Yield (i, j, window) for each kernel tap: the strided input slice it multiplies."""
    sh, sw = strides
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    for i in range(kh):
        for j in range(kw):
            win = lax.slice(
                xp,
                (0, i, j, 0),
                (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, xp.shape[3]),
                (1, sh, sw, 1),
            )
            yield i, j, win


def _conv_lax(x, kernel, strides, pads, groups):
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def _matmul_1x1(x, w):
    """[N, H, W, Cin] x [Cin, Cout] as one 2-D matmul over the N*H*W rows.

    Autodiff of this form gives the kernel gradient as one dot contracting the rows
    of both operands ([Cin, Cout] out, no transposes). The 4-D einsum's gradient came
    out as a dot that XLA:CPU fed a transposed copy of the output gradient, with
    the BN/swish backward fused into (and recomputed for) that copy: 73 ms for the
    [32, 64, 64, 96] one in the B0 train step (2026-11-27).
    """
    n, h, wd, cin = x.shape
    return jnp.dot(x.reshape(n * h * wd, cin), w).reshape(n, h, wd, w.shape[-1])


def _conv_shift_dense(x, kernel, strides, pads):
    """groups=1 conv as a sum over taps of matmuls (a 1x1 conv is a single matmul)."""
    kh, kw = kernel.shape[:2]
    out = None
    for i, j, win in _taps(_pad(x, pads), kh, kw, strides):
        term = _matmul_1x1(win, kernel[i, j])
        out = term if out is None else out + term
    return out


def _depthwise_forward(x, kernel, strides, pads):
    """Depthwise conv (multiplier 1) as a sum of shifted elementwise multiplies.

    Accumulates in at least float32 so bfloat16 inputs lose no more than lax does.
    """
    kh, kw = kernel.shape[:2]
    acc = jnp.promote_types(jnp.result_type(x, kernel), jnp.float32)
    w = kernel[:, :, 0, :].astype(acc)  # [kh, kw, C]
    out = None
    for i, j, win in _taps(_pad(x, pads), kh, kw, strides):
        term = win.astype(acc) * w[i, j]
        out = term if out is None else out + term
    return out.astype(jnp.result_type(x, kernel))


def _materialized(x: jax.Array) -> jax.Array:
    """x, computed once into a buffer before the taps read it.

    Each of the kh*kw taps reads the tensor at a different offset; left alone, XLA:CPU
    fuses x's producer (BN + swish in the forward, the BN/swish backward in the
    backward) into every tap and recomputes it kh*kw times (measured: one 3x3
    stride-2 input gradient on [32, 64, 64, 96] took 48 ms so, 2026-11-27).
    """
    return lax.optimization_barrier(x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_shift_depthwise(x, kernel, strides, pads):
    return _depthwise_forward(_materialized(x), kernel, strides, pads)


def _conv_shift_depthwise_fwd(x, kernel, strides, pads):
    x = _materialized(x)
    return _depthwise_forward(x, kernel, strides, pads), (x, kernel)


def _depthwise_input_grad(g, kernel, x_shape, strides, pads):
    """d loss / d x of the depthwise conv: a stride-1 depthwise conv of the
    stride-dilated, (k-1)-padded output gradient with the flipped kernel, cropped."""
    kh, kw = kernel.shape[:2]
    (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
    ho, wo = g.shape[1:3]
    # Rows/cols of the padded input that no output window reached get zero gradient.
    extra_h = x_shape[1] + pt + pb - (sh * (ho - 1) + kh)
    extra_w = x_shape[2] + pl + pr - (sw * (wo - 1) + kw)
    zero = jnp.zeros((), g.dtype)
    gp = lax.pad(
        g,
        zero,
        (
            (0, 0, 0),
            (kh - 1, kh - 1 + extra_h, sh - 1),
            (kw - 1, kw - 1 + extra_w, sw - 1),
            (0, 0, 0),
        ),
    )
    dxp = _depthwise_forward(gp, kernel[::-1, ::-1], (1, 1), ((0, 0), (0, 0)))
    return dxp[:, pt : pt + x_shape[1], pl : pl + x_shape[2], :]


def _depthwise_input_grad_phases(g, kernel, x_shape, strides, pads):
    """The input gradient of a strided depthwise conv, one output phase at a time.

    Padded input row s*q + a receives g[h] * k[i] only for taps i = a + s*m (h = q - m),
    so each of the sh*sw phases is a small stride-1 sum over its own taps of shifted
    g; interleaving the phases gives dx. Every product is one that contributes,
    unlike the dilated form, which multiplies the (s^2 - 1) / s^2 zeros of the
    dilated gradient too.
    """
    kh, kw, _, c = kernel.shape
    (sh, sw), ((pt, _), (pl, _)) = strides, pads
    n, ho, wo, _ = g.shape
    qh = -(-(x_shape[1] + sum(pads[0])) // sh)  # rows per phase (padded input, rounded up)
    qw = -(-(x_shape[2] + sum(pads[1])) // sw)
    acc_dtype = jnp.promote_types(jnp.result_type(g, kernel), jnp.float32)
    w = kernel[:, :, 0, :].astype(acc_dtype)
    zero = jnp.zeros((), acc_dtype)
    gf = g.astype(acc_dtype)
    rows = []
    for a in range(sh):
        cols = []
        for b in range(sw):
            acc = None
            for mi in range(-(-(kh - a) // sh)):
                for mj in range(-(-(kw - b) // sw)):
                    # phase[q] = sum_m g[q - m] * k[a + s*m]: g shifted down by m, cropped.
                    shifted = lax.pad(
                        gf,
                        zero,
                        ((0, 0, 0), (mi, qh - ho - mi, 0), (mj, qw - wo - mj, 0), (0, 0, 0)),
                    )
                    term = shifted * w[a + sh * mi, b + sw * mj]
                    acc = term if acc is None else acc + term
            cols.append(jnp.zeros((n, qh, qw, c), acc_dtype) if acc is None else acc)
        rows.append(jnp.stack(cols, axis=3))  # [n, qh, qw, sw, c]
    dxp = jnp.stack(rows, axis=2).reshape(n, qh * sh, qw * sw, c)
    return dxp[:, pt : pt + x_shape[1], pl : pl + x_shape[2], :]


def _depthwise_kernel_grad(x, g, kernel, strides, pads):
    """d loss / d kernel: per tap, the sum over (N, Ho, Wo) of window * g."""
    kh, kw, _, c = kernel.shape
    sh, sw = strides
    ho, wo = g.shape[1:3]
    acc = jnp.promote_types(jnp.result_type(x, kernel), jnp.float32)
    xp = _pad(x, pads)
    g = g.astype(acc)

    def tap_grad(t):
        win = lax.dynamic_slice(
            xp, (0, t // kw, t % kw, 0), (xp.shape[0], sh * (ho - 1) + 1, sw * (wo - 1) + 1, c)
        )[:, ::sh, ::sw]
        return jnp.sum(win.astype(acc) * g, axis=(0, 1, 2))

    return lax.map(tap_grad, jnp.arange(kh * kw)).reshape(kh, kw, 1, c)


def _conv_shift_depthwise_bwd(strides, pads, residuals, g):
    # Autodiff writes the kernel gradient as kh*kw separate reductions, which
    # XLA:CPU compiles slowly (~0.75 s per 5x5 conv) and runs 2-3x slower than
    # one reduction looped over the taps with lax.map. For the input gradient,
    # autodiff's sum of pads is fastest up to 3x3 at stride 1; for 5x5 the
    # flipped-kernel conv runs 2-4x faster (measured on [32, 8..16, 8..16,
    # 144..480]); strided convs go phase by phase.
    x, kernel = residuals
    g = _materialized(g)
    kh, kw = kernel.shape[:2]
    if strides != (1, 1):
        dx = _depthwise_input_grad_phases(g, kernel, x.shape, strides, pads)
    elif kh * kw <= 9:
        _, vjp_x = jax.vjp(lambda x: _depthwise_forward(x, kernel, strides, pads), x)
        (dx,) = vjp_x(g)
    else:
        dx = _depthwise_input_grad(g, kernel, x.shape, strides, pads)
    dk = _depthwise_kernel_grad(x, g, kernel, strides, pads)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv_shift_depthwise.defvjp(_conv_shift_depthwise_fwd, _conv_shift_depthwise_bwd)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    feature_group_count: int = 1,
    impl: ConvImpl = "auto",
) -> jax.Array:
    """2-D convolution, NHWC x HWIO -> NHWC, in the fastest form for the backend.

    Args:
      x: [N, H, W, Cin] input.
      kernel: [kh, kw, Cin // feature_group_count, Cout].
      strides: int or (sh, sw).
      padding: "SAME" (TensorFlow semantics: out = ceil(in / stride), odd pad at
        bottom/right), "VALID", or ((top, bottom), (left, right)) in pixels.
      feature_group_count: 1 for a dense conv, Cin for a depthwise conv.
      impl: "lax" = ``lax.conv_general_dilated``; "einsum_shift" = einsum for
        dense convs (sum over taps for k > 1) and shifted multiplies for
        depthwise (multiplier 1; custom VJP, so first-order gradients only);
        other grouped convs run group by group in the dense form;
        "auto" = lax on GPU/TPU, and on CPU
        einsum_shift for 1x1 dense and depthwise convs, lax for the rest,
        except that grouped (not depthwise) convs run as one dense conv per
        group (XLA:CPU's grouped conv is ~5x slower: fwd+bwd of a 3x3, 2-group,
        128 -> 256 conv on [16, 28, 28, 128]: 1.43 s vs 0.28 s).

    Returns:
      [N, Ho, Wo, Cout] in the promoted dtype of x and kernel.
    """
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"need x [N,H,W,C] and kernel HWIO, got {x.shape} and {kernel.shape}")
    kh, kw, kin, cout = kernel.shape
    cin = x.shape[-1]
    groups = int(feature_group_count)
    if cin != kin * groups:
        raise ValueError(f"x has {cin} channels but kernel {kernel.shape} x {groups} groups")
    strides = _pair(strides)
    pads = resolve_padding(padding, x.shape[1:3], (kh, kw), strides)

    dense = groups == 1
    depthwise = groups == cin and kin == 1 and cout == cin and groups > 1
    on_cpu = trace_backend() == "cpu"
    if not dense and not depthwise and (impl == "einsum_shift" or (impl == "auto" and on_cpu)):
        # One dense conv per group (input and output channels split alike), each in
        # the form ``impl`` picks for a dense conv of that shape.
        xs = jnp.split(x, groups, axis=-1)
        ks = jnp.split(kernel, groups, axis=-1)
        outs = [
            conv2d(a, b, strides=strides, padding=pads, impl=impl)
            for a, b in zip(xs, ks, strict=True)
        ]
        return jnp.concatenate(outs, axis=-1)
    if impl == "auto":
        cheap = (dense and kh == kw == 1) or depthwise
        impl = "einsum_shift" if cheap and on_cpu else "lax"
    if impl == "lax":
        return _conv_lax(x, kernel, strides, pads, groups)
    if dense:
        return _conv_shift_dense(x, kernel, strides, pads)
    return _conv_shift_depthwise(x, kernel, strides, pads)


Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]

_INIT_CHUNK = 1 << 16


def chunked_normal(
    key: jax.Array, shape: Sequence[int], dtype=jnp.float32, stddev: float = 1.0
) -> jax.Array:
    """N(0, stddev^2) samples of ``shape``, drawn in fixed chunks of 65536 values.

    Why: XLA:CPU spends ~0.15 s compiling each distinct ``jax.random.normal``
    shape, so a model with ~100 kernel shapes took ~18 s to build. Chunk i is
    ``normal(fold_in(key, i), (65536,))``; eagerly that is one cached executable
    for every kernel, under tracing one vmapped op; both give the same values.
    """
    n = math.prod(shape)
    n_chunks = max(1, -(-n // _INIT_CHUNK))
    if isinstance(key, jax.core.Tracer):
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n_chunks))
        flat = jax.vmap(lambda k: jax.random.normal(k, (_INIT_CHUNK,)))(keys).reshape(-1)
        return (flat[:n].reshape(shape) * stddev).astype(dtype)
    parts = [
        np.asarray(jax.random.normal(jax.random.fold_in(key, i), (_INIT_CHUNK,)))
        for i in range(n_chunks)
    ]
    flat = np.concatenate(parts)[:n]
    return jnp.asarray((flat.reshape(shape) * stddev).astype(dtype))


def conv_kernel_init(groups: int = 1) -> Initializer:
    """He normal over fan_out, as ``conv_kernel_initializer`` of the EfficientNet release.

    stddev = sqrt(2 / fan_out), untruncated. fan_out = kh * kw * Cout, except for
    depthwise kernels (groups == Cin) where TF counts the depth multiplier,
    kh * kw * Cout / groups.
    """

    def init(key, shape, dtype=jnp.float32):
        kh, kw, kin, cout = shape
        depthwise = groups > 1 and kin == 1
        fan_out = kh * kw * (cout // groups if depthwise else cout)
        return chunked_normal(key, shape, dtype, stddev=math.sqrt(2.0 / fan_out))

    return init


class Conv2d(nnx.Module):
    """2-D convolution with params ``kernel`` [kh, kw, Cin/groups, Cout] (+ ``bias`` [Cout]).

    Params stay in ``param_dtype``; input and kernel are cast to ``dtype`` for the
    arithmetic (bfloat16 on TPU/GPU), and the output is in ``dtype``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = False,
        padding: Padding = "SAME",
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        kernel_init: Initializer | None = None,
        impl: ConvImpl = "auto",
        rngs: nnx.Rngs,
    ):
        if in_features % groups or out_features % groups:
            raise ValueError(f"groups={groups} must divide {in_features} and {out_features}")
        kh, kw = _pair(kernel_size)
        init = kernel_init or conv_kernel_init(groups)
        shape = (kh, kw, in_features // groups, out_features)
        self.kernel = nnx.Param(init(rngs.params(), shape, param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = (kh, kw)
        self.strides = _pair(strides)
        self.groups = groups
        self.padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))
        self.dtype = dtype
        self.impl = impl

    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, H, W, Cin] -> [N, Ho, Wo, Cout] in ``dtype``."""
        y = conv2d(
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            strides=self.strides,
            padding=self.padding,
            feature_group_count=self.groups,
            impl=self.impl,
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class DepthwiseConv2d(Conv2d):
    """Depthwise conv (multiplier 1): kernel [kh, kw, 1, features], one filter per channel."""

    def __init__(
        self,
        features: int,
        kernel_size: int | Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        use_bias: bool = False,
        padding: Padding = "SAME",
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        kernel_init: Initializer | None = None,
        impl: ConvImpl = "auto",
        rngs: nnx.Rngs,
    ):
        super().__init__(
            features,
            features,
            kernel_size,
            strides=strides,
            groups=features,
            use_bias=use_bias,
            padding=padding,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            impl=impl,
            rngs=rngs,
        )
