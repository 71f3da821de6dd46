"""GeM against the numpy formula; neck shapes, BN modes and PReLU against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gld_jax.models.neck import EmbeddingNeck, PReLU
from gld_jax.models.pooling import GeM


def _gem_numpy(x, p, eps):
    x = np.maximum(x.astype(np.float64), eps)
    return np.mean(x**p, axis=(1, 2)) ** (1.0 / p)


@pytest.mark.parametrize("p", [1.0, 3.0, 4.5])
def test_gem_matches_numpy_formula(p):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 4, 7)).astype(np.float32)  # half negative: exercises the clamp
    pool = GeM(p=p)
    out = pool(jnp.asarray(x, jnp.bfloat16))
    assert out.shape == (3, 7) and out.dtype == jnp.float32
    xb = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(out, _gem_numpy(xb, p, 1e-6), rtol=1e-5)
    if p == 1.0:  # GeM(1) of positive inputs is average pooling
        np.testing.assert_allclose(pool(jnp.abs(x)), np.abs(x).mean((1, 2)), rtol=1e-5)


def test_gem_p_is_learnable_or_fixed():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(0.1, 2.0, size=(2, 3, 3, 4)), jnp.float32)
    pool = GeM(p=3.0)
    assert pool.p.shape == (1,)

    def loss(m):
        return jnp.sum(m(x))

    g = nnx.grad(loss)(pool)
    # d/dp of (mean x^p)^(1/p), by central finite differences of the numpy formula.
    xn = np.asarray(x, np.float64)
    h = 1e-4
    fd = (_gem_numpy(xn, 3 + h, 1e-6).sum() - _gem_numpy(xn, 3 - h, 1e-6).sum()) / (2 * h)
    np.testing.assert_allclose(float(g.p[...][0]), fd, rtol=1e-3)
    fixed = GeM(p=3.0, learnable=False)
    assert not jax.tree.leaves(nnx.state(fixed, nnx.Param))
    np.testing.assert_allclose(fixed(x), pool(x), rtol=1e-6)


def test_prelu_matches_numpy():
    x = np.linspace(-3, 3, 13, dtype=np.float32)
    act = PReLU()
    assert act.slope.shape == (1,) and float(act.slope[...][0]) == 0.25
    np.testing.assert_allclose(act(jnp.asarray(x)), np.where(x >= 0, x, 0.25 * x))


@pytest.mark.parametrize("activation", ["swish", "prelu"])
def test_neck_matches_numpy_in_train_and_eval(activation):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 24)).astype(np.float32)
    neck = EmbeddingNeck(24, dim=8, activation=activation, rngs=nnx.Rngs(0))
    w, b = np.asarray(neck.linear.kernel[...]), np.asarray(neck.linear.bias[...])
    assert w.shape == (24, 8)
    act = (
        (lambda z: z / (1 + np.exp(-z)))
        if activation == "swish"
        else (lambda z: np.where(z >= 0, z, 0.25 * z))
    )
    z = x @ w + b
    # Train: biased batch variance (as PyTorch BN1d normalises), eps 1e-5.
    mu, var = z.mean(0), z.var(0)
    out = neck(jnp.asarray(x))
    assert out.shape == (16, 8) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, act((z - mu) / np.sqrt(var + 1e-5)), rtol=1e-4, atol=1e-5)
    # Running stats moved by (1 - momentum) = 0.1 from (0, 1).
    np.testing.assert_allclose(neck.bn.mean[...], 0.1 * mu, rtol=1e-4, atol=1e-6)
    neck.eval()
    run_mu, run_var = np.asarray(neck.bn.mean[...]), np.asarray(neck.bn.var[...])
    out_eval = neck(jnp.asarray(x))
    np.testing.assert_allclose(
        out_eval, act((z - run_mu) / np.sqrt(run_var + 1e-5)), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_array_equal(neck.bn.mean[...], run_mu)  # eval leaves stats alone


def test_neck_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        EmbeddingNeck(4, 2, "relu", rngs=nnx.Rngs(0))
