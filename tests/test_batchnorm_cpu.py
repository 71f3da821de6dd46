"""layers.BatchNorm: the hand-written train-mode gradient (XLA:CPU) equals flax's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gld_jax.models import batch_norm as batch_norm_lib
from gld_jax.models import layers


def _pair(c, momentum=0.99, eps=1e-3):
    kw = dict(momentum=momentum, epsilon=eps, use_fast_variance=False, rngs=nnx.Rngs(0))
    return layers.BatchNorm(c, **kw), nnx.BatchNorm(c, **kw)


def _jaxpr(module, x) -> str:
    graphdef, state = nnx.split(module)
    return str(jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x))


@pytest.mark.parametrize("shape", [(4, 5, 6, 8), (3, 16), (2, 3, 3, 1)])
def test_train_mode_matches_flax_values_stats_and_grads(shape):
    rng = np.random.default_rng(0)
    # A large mean offset: the two-pass variance must be kept.
    x = jnp.asarray(rng.normal(size=shape) * 2.0 + 30.0, jnp.float32)
    ct = jnp.asarray(rng.normal(size=shape), jnp.float32)
    c = shape[-1]
    ours, ref = _pair(c)
    scale = jnp.asarray(rng.normal(size=c) + 1.0, jnp.float32)
    bias = jnp.asarray(rng.normal(size=c), jnp.float32)
    for m in (ours, ref):
        m.scale[...], m.bias[...] = scale, bias
    assert layers.BatchNorm.hand_written_grad and jax.default_backend() == "cpu"

    def loss(m, x):
        return jnp.sum(jax.nn.swish(m(x)) * ct)

    outs = []
    for m in (ours, ref):
        value, (gm, gx) = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1)))(m, x)
        outs.append((value, gm, gx, np.asarray(m.mean[...]), np.asarray(m.var[...])))
    (v0, gm0, gx0, mu0, var0), (v1, gm1, gx1, mu1, var1) = outs
    np.testing.assert_allclose(v0, v1, rtol=1e-5)
    np.testing.assert_allclose(mu0, mu1, rtol=1e-6)
    np.testing.assert_allclose(var0, var1, rtol=1e-5)
    scale = float(np.abs(gx1).max())
    np.testing.assert_allclose(gx0, gx1, rtol=1e-4, atol=1e-5 * scale)
    for name in ("scale", "bias"):
        a, b = np.asarray(getattr(gm0, name)[...]), np.asarray(getattr(gm1, name)[...])
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    # It is the hand-written rule that ran (its custom_vjp is in the jaxpr).
    assert "custom_vjp_call" in _jaxpr(ours, x)


def test_statistics_cotangents_follow_autodiff():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 4, 5, 6)) + 5.0, jnp.float32)
    scale = jnp.asarray(rng.normal(size=6), jnp.float32)
    bias = jnp.asarray(rng.normal(size=6), jnp.float32)
    cts = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((3, 4, 5, 6), (6,), (6,))]

    def f(fn):
        def loss(x, scale, bias):
            outs = fn(x, scale, bias)
            return sum(jnp.sum(o * c) for o, c in zip(outs, cts, strict=True))

        return jax.grad(loss, argnums=(0, 1, 2))(x, scale, bias)

    for one_pass in (False, True):
        ours = f(lambda x, s, b, o=one_pass: batch_norm_lib._bn_train(x, s, b, 1e-3, o))
        ref = f(lambda x, s, b, o=one_pass: batch_norm_lib._bn_train_forward(x, s, b, 1e-3, o)[:3])
        for a, b in zip(ours, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))


def test_eval_mode_and_switch_off_are_flax():
    ours, ref = _pair(4)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 3, 4)), jnp.float32)
    ours.eval(), ref.eval()
    np.testing.assert_array_equal(ours(x), ref(x))
    ours.train()
    ours.hand_written_grad = False
    assert "custom_vjp_call" not in _jaxpr(ours, x)
