"""Lane-dense (W folded into the channels) forms of EfficientNet's first stages:
the same numbers as the plain layers, forward and backward, and the model
folds only where it can (gld_jax/models/lane_dense.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gld_jax.models import efficientnet as E
from gld_jax.models import lane_dense as L
from gld_jax.models.batch_norm import batch_norm
from gld_jax.models.conv import conv2d


def _rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_fold_is_the_strided_layout_and_unfold_its_inverse():
    x = _rand((2, 3, 16, 5))
    xs = L.fold(x, 4)
    assert xs.shape == (2, 3, 4, 20)
    # lane group r holds the columns 4r .. 4r + 3
    np.testing.assert_array_equal(xs[:, :, 1, 2 * 5 : 3 * 5], x[:, :, 2 * 4 + 1])
    np.testing.assert_array_equal(L.unfold(xs, 4), x)
    v = jnp.arange(20.0)
    np.testing.assert_array_equal(L.per_channel(v, 4), v.reshape(4, 5).sum(0))
    np.testing.assert_array_equal(L.per_lane(jnp.arange(5.0), 4)[5:10], jnp.arange(5.0))


@pytest.mark.parametrize("stride, height", [(1, 7), (2, 8), (2, 7)])
def test_folded_depthwise_and_pointwise_equal_the_plain_convolutions(stride, height):
    x, f = _rand((2, height, 16, 6)), 4
    k = _rand((3, 3, 1, 6), 1)
    plain = conv2d(x, k, strides=stride, feature_group_count=6, impl="lax")
    folded = L.unfold(L.depthwise(L.fold(x, f), k, f, stride), f)
    np.testing.assert_allclose(folded, plain, atol=2e-6)
    w = _rand((1, 1, 6, 10), 2)
    plain = conv2d(x, w, impl="lax")
    np.testing.assert_allclose(L.unfold(L.pointwise(L.fold(x, f), w, f), f), plain, atol=2e-6)
    with pytest.raises(ValueError, match="no folded depthwise"):  # 3 columns per group
        L.depthwise(L.fold(_rand((2, 4, 24, 6)), 8), k, 8, 2)


@pytest.mark.parametrize("one_pass", [False, True])
def test_folded_batch_norm_equals_the_plain_one_forward_backward_and_statistics(one_pass):
    x, f = _rand((2, 5, 16, 6)) * 3 + 1, 4
    bns = [batch_norm(6, momentum=0.9, epsilon=1e-3, dtype=jnp.float32, rngs=nnx.Rngs(0))]
    bns.append(batch_norm(6, momentum=0.9, epsilon=1e-3, dtype=jnp.float32, rngs=nnx.Rngs(0)))
    for bn in bns:
        bn.one_pass_backends = ("cpu",) if one_pass else ()
        bn.scale[...] = 1 + _rand((6,), 3) / 4
        bn.bias[...] = _rand((6,), 4)
    r = _rand((2, 5, 16, 6), 5)

    def plain(bn, x):
        return jnp.sum(bn(x) * r)

    def folded(bn, x):
        return jnp.sum(L.unfold(bn(L.fold(x, f), fold=f), f) * r)

    (lp, (gbp, gxp)), (lf, (gbf, gxf)) = (
        nnx.value_and_grad(fn, argnums=(0, 1))(bn, x)
        for fn, bn in ((plain, bns[0]), (folded, bns[1]))
    )
    np.testing.assert_allclose(lf, lp, rtol=1e-5)
    np.testing.assert_allclose(gxf, gxp, atol=1e-5)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(gbf[name][...], gbp[name][...], rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):  # the running statistics move alike
        np.testing.assert_allclose(bns[1].__dict__[name][...], bns[0].__dict__[name][...], 1e-5)


def _model(backends, monkeypatch, **kwargs):
    monkeypatch.setattr(E.EfficientNet, "lane_dense_backends", backends)
    model = E.EfficientNet(
        "b0", rngs=nnx.Rngs(0), blocks_args=E.SHALLOW_BLOCKS, drop_path_rate=0.0, **kwargs
    )
    model.train()
    return model


def test_the_model_runs_its_first_two_stages_folded_with_the_same_numbers(monkeypatch):
    """B0's shallow table: block1a, block2a (stride 2) and block2b (skip) run
    folded, block3a plain; outputs, every gradient and the batch statistics as
    the plain model's (a random projection of the output as the loss: a sum of
    squares after the last BatchNorm would be a constant)."""
    x = _rand((2, 64, 64, 3))
    r = jnp.cos(jnp.arange(2 * 8 * 8 * 1280, dtype=jnp.float32)).reshape(2, 8, 8, 1280)
    runs = []
    for backends in ((), ("cpu",)):
        model = _model(backends, monkeypatch)
        assert model._lane_fold(32) == (8 if backends else 0)
        loss, grads = nnx.value_and_grad(lambda m: jnp.sum(m(x) * r))(model)
        flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(grads))[0]
        stats = jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
        runs.append((loss, {jax.tree_util.keystr(k): v for k, v in flat}, stats))
    (lp, gp, sp), (lf, gf, sf) = runs
    np.testing.assert_allclose(lf, lp, rtol=1e-5)
    assert gp.keys() == gf.keys()
    for key, g in gp.items():
        # project_bn's bias feeds the next BatchNorm through a linear map: its
        # gradient is zero up to rounding (|g| ~ 1e-4) and compared as such
        np.testing.assert_allclose(gf[key], g, rtol=1e-4, atol=2e-4, err_msg=key)
    for a, b in zip(sp, sf, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_the_model_folds_only_where_it_can(monkeypatch):
    model = _model(("cpu",), monkeypatch)
    assert model._lane_fold(36) == 0  # 36 columns: not a multiple of the fold
    assert model._lane_fold(40) == 0  # 5 columns per group before a stride-2 block
    model.eval()  # the embedding step and evaluation stay plain
    assert model._lane_fold(32) == 0
    assert _model(("cpu",), monkeypatch, remat=True)._lane_fold(32) == 0
    assert _model(("tpu",), monkeypatch)._lane_fold(32) == 0  # tracing for this CPU
