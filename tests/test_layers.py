"""Conv forms agree with lax.conv and TensorFlow; modules hold the right params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from gld_jax.models.layers import (
    BatchNorm,
    Conv2d,
    DepthwiseConv2d,
    DropPath,
    chunked_normal,
    conv2d,
    same_padding,
)


def _lax_oracle(x, k, strides, padding, groups):
    # lax's own "SAME"/"VALID" (lax.padtype_to_pads), independent of our same_padding.
    return lax.conv_general_dilated(
        x,
        k,
        (strides, strides),
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
    )


# (kind, kernel, stride, H, W, padding): 1x1 and depthwise 3x3/5x5, stride 1/2,
# odd and even sizes, SAME/VALID and explicit pairs; dense 3x3 for the tap-sum form.
CASES = [
    ("dense", 1, 1, 8, 8, "SAME"),
    ("dense", 1, 2, 9, 8, "SAME"),
    ("dense", 1, 2, 7, 7, "VALID"),
    ("depthwise", 3, 1, 8, 8, "SAME"),
    ("depthwise", 3, 1, 7, 9, "VALID"),
    ("depthwise", 3, 2, 8, 8, "SAME"),
    ("depthwise", 3, 2, 9, 7, "SAME"),
    ("depthwise", 5, 1, 9, 8, "SAME"),
    ("depthwise", 5, 2, 8, 10, "SAME"),
    ("depthwise", 5, 2, 11, 9, "SAME"),
    ("depthwise", 5, 2, 11, 9, "VALID"),
    ("depthwise", 3, 2, 8, 9, ((0, 1), (2, 1))),
    ("dense", 3, 2, 9, 8, "SAME"),
    ("dense", 3, 1, 6, 7, ((1, 0), (0, 2))),
    # Grouped (2 groups, not depthwise: ResNeSt's split-attention conv), run per group.
    ("grouped", 3, 1, 8, 7, ((1, 1), (1, 1))),
    ("grouped", 3, 2, 9, 8, "SAME"),
    ("grouped", 1, 1, 7, 7, "VALID"),
]


@pytest.mark.parametrize("kind,k,s,h,w,padding", CASES)
def test_einsum_shift_matches_lax_forward_and_grad(kind, k, s, h, w, padding):
    rng = np.random.default_rng(k * 100 + s * 10 + h + w)
    cin = 6
    cout, groups = {"depthwise": (cin, cin), "dense": (5, 1), "grouped": (4, 2)}[kind]
    x = jnp.asarray(rng.normal(size=(2, h, w, cin)), jnp.float32)
    kern = jnp.asarray(rng.normal(size=(k, k, cin // groups, cout)), jnp.float32)
    ct = None

    def loss(fn):
        def f(x, kern):
            y = fn(x, kern)
            return jnp.sum(y * ct), y

        # jit: eager mode would compile each of the k*k taps' ops separately.
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(x, kern)

    ours_fn = lambda x, kern: conv2d(
        x, kern, strides=s, padding=padding, feature_group_count=groups, impl="einsum_shift"
    )
    ref_fn = lambda x, kern: _lax_oracle(x, kern, s, padding, groups)
    y_ref = ref_fn(x, kern)
    ct = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
    (_, y), g = loss(ours_fn)
    (_, y_r), g_r = loss(ref_fn)
    assert y.shape == y_r.shape
    scale = float(jnp.max(jnp.abs(y_r)))
    np.testing.assert_allclose(y, y_r, atol=1e-5 * scale, rtol=1e-5)
    for a, b in zip(g, g_r, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.max(jnp.abs(b))), rtol=1e-5)
    # lax form through our padding resolution agrees too.
    y_lax = conv2d(x, kern, strides=s, padding=padding, feature_group_count=groups, impl="lax")
    np.testing.assert_allclose(y_lax, y_r, atol=1e-5 * scale, rtol=1e-5)


@pytest.mark.parametrize(
    "n,k,s", [(8, 3, 2), (9, 3, 2), (8, 5, 2), (9, 5, 2), (7, 1, 2), (7, 3, 1)]
)
def test_same_padding_is_tensorflow_same(n, k, s):
    import tensorflow as tf

    rng = np.random.default_rng(n + k + s)
    x = rng.normal(size=(1, n, n, 4)).astype(np.float32)
    kern = rng.normal(size=(k, k, 4, 1)).astype(np.float32)
    ref = tf.nn.depthwise_conv2d(x, kern, (1, s, s, 1), "SAME").numpy()
    ours = jax.jit(
        lambda x, k: conv2d(
            x, k, strides=s, padding="SAME", feature_group_count=4, impl="einsum_shift"
        )
    )(x, kern.transpose(0, 1, 3, 2))
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5)
    # TF rule written out: extra pixel goes at the bottom/right.
    total = max((-(-n // s) - 1) * s + k - n, 0)
    assert same_padding(n, k, s) == (total // 2, total - total // 2)


def _primitives(fn, *args):
    return {e.primitive.name for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


def test_auto_picks_cheap_forms_on_cpu():
    assert jax.default_backend() == "cpu"
    x = jnp.ones((1, 8, 8, 4))
    conv = "conv_general_dilated"
    assert conv not in _primitives(lambda x, k: conv2d(x, k), x, jnp.ones((1, 1, 4, 8)))
    dw = lambda x, k: conv2d(x, k, strides=2, feature_group_count=4)
    assert conv not in _primitives(dw, x, jnp.ones((3, 3, 1, 4)))
    assert conv in _primitives(lambda x, k: conv2d(x, k), x, jnp.ones((3, 3, 4, 8)))
    assert conv in _primitives(lambda x, k: conv2d(x, k, impl="lax"), x, jnp.ones((1, 1, 4, 8)))
    # A 2-group 3x3 conv: two dense convs, no grouped one.
    eqns = jax.make_jaxpr(lambda x, k: conv2d(x, k, feature_group_count=2))(
        x, jnp.ones((3, 3, 2, 8))
    ).jaxpr.eqns
    groups = [e.params["feature_group_count"] for e in eqns if e.primitive.name == conv]
    assert groups == [1, 1]


def test_conv2d_rejects_bad_arguments():
    x = jnp.ones((1, 4, 4, 4))
    with pytest.raises(ValueError, match="impl"):
        conv2d(x, jnp.ones((1, 1, 4, 4)), impl="fast")
    with pytest.raises(ValueError, match="channels"):
        conv2d(x, jnp.ones((1, 1, 3, 4)))


def test_conv_modules_params_dtype_and_init_scale():
    conv = Conv2d(256, 512, 1, use_bias=True, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert conv.kernel.shape == (1, 1, 256, 512) and conv.kernel.dtype == jnp.float32
    assert conv.bias.shape == (512,)
    y = conv(jnp.ones((2, 4, 4, 256)))
    assert y.dtype == jnp.bfloat16 and y.shape == (2, 4, 4, 512)
    # EfficientNet release: stddev = sqrt(2 / fan_out), fan_out = kh*kw*Cout.
    np.testing.assert_allclose(float(jnp.std(conv.kernel[...])), np.sqrt(2 / 512), rtol=0.02)
    dw = DepthwiseConv2d(4096, 5, strides=2, rngs=nnx.Rngs(1))
    assert dw.kernel.shape == (5, 5, 1, 4096) and dw.bias is None
    # Depthwise: TF counts the depth multiplier (1), fan_out = kh*kw.
    np.testing.assert_allclose(float(jnp.std(dw.kernel[...])), np.sqrt(2 / 25), rtol=0.02)
    assert nnx.jit(lambda m, x: m(x))(dw, jnp.ones((1, 9, 9, 4096))).shape == (1, 5, 5, 4096)


def test_chunked_normal_same_values_eager_and_traced():
    key = jax.random.key(3)
    shape = (3, 3, 40, 2000)  # > 1 chunk of 65536
    eager = chunked_normal(key, shape, stddev=0.5)
    traced = jax.jit(lambda k: chunked_normal(k, shape, stddev=0.5))(key)
    np.testing.assert_allclose(eager, traced, rtol=1e-6, atol=1e-7)
    assert abs(float(jnp.mean(eager))) < 0.01
    np.testing.assert_allclose(float(jnp.std(eager)), 0.5, rtol=0.01)


def test_drop_path_train_drops_whole_samples_eval_is_identity():
    dp = DropPath(0.25, rngs=nnx.Rngs(dropout=0))
    x = jnp.ones((4000, 2, 2, 3))
    y = np.asarray(dp(x))
    per_sample = y.reshape(4000, -1)
    # Each sample is either dropped whole or kept and scaled by 1/(1-rate).
    assert np.all((per_sample == 0).all(1) | np.isclose(per_sample, 1 / 0.75).all(1))
    frac_dropped = (per_sample == 0).all(1).mean()
    assert abs(frac_dropped - 0.25) < 0.03  # binomial sd ~0.007
    assert not np.array_equal(np.asarray(dp(x)), y)  # the rng stream advances
    dp.eval()
    np.testing.assert_array_equal(dp(x), x)
    dp.train()
    assert not np.array_equal(np.asarray(dp(x)), np.asarray(x))
    view = nnx.view(dp, deterministic=True)
    np.testing.assert_array_equal(view(x), x)


def test_batch_stat_and_drop_path_updates_never_walk_the_trace(monkeypatch):
    """flax's Variable.__setitem__ probes `value.sharding`; on a tracer jax builds
    that error by walking every equation traced so far (find_progenitors), which
    made tracing a deep network quadratic. Our BatchNorm (both its CPU float32
    path and flax's bfloat16 path) and DropPath must update state without it,
    and still update it: the jitted step's statistics equal the eager ones."""
    from jax._src.interpreters import partial_eval

    walks = []
    original = partial_eval.JaxprStackFrame.find_progenitors

    def counting(self, tracer):
        walks.append(1)
        return original(self, tracer)

    monkeypatch.setattr(partial_eval.JaxprStackFrame, "find_progenitors", counting)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5, 5, 6)), jnp.float32)
    for dtype in (jnp.float32, jnp.bfloat16):
        eager = BatchNorm(6, dtype=dtype, rngs=nnx.Rngs(0))
        traced = BatchNorm(6, dtype=dtype, rngs=nnx.Rngs(0))
        eager(x)

        @nnx.jit
        def step(bn, x):
            return bn(x)

        step(traced, x)
        for name in ("mean", "var"):
            np.testing.assert_allclose(
                getattr(traced, name)[...], getattr(eager, name)[...], rtol=1e-6, atol=1e-7
            )
        assert not np.allclose(traced.mean[...], 0.0)  # the statistics moved
    dp = DropPath(0.5, rngs=nnx.Rngs(dropout=0))
    drop = nnx.jit(lambda m, x: m(x))
    first, second = drop(dp, jnp.ones((64, 1))), drop(dp, jnp.ones((64, 1)))
    assert int(dp.rngs.count[...]) == 2 and not np.array_equal(first, second)
    assert walks == []
    # the trainer reseeds the stream every step: same seed, same mask; new seed, new mask
    masks = []
    for seed in (1, 2, 1):
        nnx.reseed(dp, dropout=seed)
        masks.append(np.asarray(drop(dp, jnp.ones((64, 1)))))
    assert np.array_equal(masks[0], masks[2]) and not np.array_equal(masks[0], masks[1])
