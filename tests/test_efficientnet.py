"""EfficientNet against Keras 3 ``keras.applications`` (the TF release) as the oracle."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gld_jax.models.efficientnet import (
    SHALLOW_BLOCKS,
    EfficientNet,
    efficientnet_variants,
    round_filters,
)
from gld_jax.models.keras_import import keras_weight_targets, load_keras_efficientnet
from gld_jax.models.layers import traceable_rngs
from gld_jax.models.registry import BACKBONES, backbone_names, create_backbone

# Trainable / total parameter counts of keras.applications.EfficientNetB{i}(weights=None,
# include_top=False), measured with Keras 3.15 on 2026-11-27 (sum of trainable_weights).
KERAS_TRAINABLE = {
    "b0": 4_007_548,
    "b1": 6_513_184,
    "b2": 7_700_994,
    "b3": 10_696_232,
    "b4": 17_548_616,
    "b5": 28_340_784,
    "b6": 40_735_704,
    "b7": 63_786_960,
}
# A shallow table, the first three stages with 1, 2, 1 blocks: covers no-expand and
# expand blocks, k=3 and k=5, stride 1 and 2, and an identity skip with drop path.
SHALLOW = SHALLOW_BLOCKS  # B0's first three stages, 1 + 2 + 1 blocks


def _keras():
    keras = pytest.importorskip("keras")
    return keras


def _randomize_keras_bn(model, seed):
    """Non-trivial BN gamma/beta/moving stats so eval-mode BN is really compared."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.2, c),
                    rng.normal(0, 0.2, c),
                    rng.uniform(0.5, 1.5, c),
                ]
            )


def _after_preprocessing(keras, model):
    # Our backbone takes normalised images: start Keras right after Rescaling/Normalization.
    return keras.Model(model.get_layer("stem_conv_pad").input, model.output)


def _keras_generic(keras, width, depth, blocks, shape, drop_connect_rate=0.2):
    from keras.src.applications.efficientnet import EfficientNet as KerasEfficientNet

    return KerasEfficientNet(
        width,
        depth,
        224,
        drop_connect_rate=drop_connect_rate,
        blocks_args=[dataclasses.asdict(b) for b in blocks],
        include_top=False,
        weights=None,
        input_shape=shape,
    )


def _n_params(model, kind=nnx.Param):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, kind)))


def _forward(model, x):
    return nnx.jit(lambda m, x: m(x))(model, x)


@pytest.fixture(scope="module")
def keras_b0():
    """Keras B0 on a 72x57 input (odd and even sizes at stride-2 layers), random BN."""
    keras = _keras()
    km = keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(72, 57, 3))
    _randomize_keras_bn(km, seed=0)
    return km


def test_b0_parameter_counts_equal_keras(keras_b0):
    ours = EfficientNet("b0", rngs=nnx.Rngs(0))
    trainable = sum(int(np.prod(w.shape)) for w in keras_b0.trainable_weights)
    assert _n_params(ours) == trainable == KERAS_TRAINABLE["b0"]
    # Keras non-trainables = BN moving stats + Normalization mean(3), variance(3), count(1).
    non_trainable = sum(int(np.prod(w.shape)) for w in keras_b0.non_trainable_weights)
    assert _n_params(ours, nnx.BatchStat) == non_trainable - 7
    assert ours.feature_dim == 1280


@pytest.mark.parametrize("variant", sorted(KERAS_TRAINABLE))
def test_parameter_counts_equal_keras_measurement(variant):
    abstract = nnx.eval_shape(lambda: EfficientNet(variant, rngs=traceable_rngs(0)))
    assert _n_params(abstract) == KERAS_TRAINABLE[variant]
    assert abstract.feature_dim == round_filters(1280, efficientnet_variants()[variant][0])


def test_b0_forward_matches_keras_in_eval_mode(keras_b0):
    keras = _keras()
    x = np.random.default_rng(1).normal(size=(2, 72, 57, 3)).astype(np.float32)
    ref = np.asarray(_after_preprocessing(keras, keras_b0)(x, training=False))
    ours = EfficientNet("b0", rngs=nnx.Rngs(0))
    load_keras_efficientnet(ours, keras_b0)
    ours.eval()
    out = np.asarray(_forward(ours, jnp.asarray(x)))
    assert out.shape == ref.shape == (2, 3, 2, 1280) and out.dtype == np.float32
    scale = np.abs(ref).max()
    assert scale > 0.1
    assert np.abs(out - ref).max() <= 1e-4 * scale


def test_b0_drop_rates_grow_linearly_as_keras(keras_b0):
    keras_rates = {
        layer.name.removesuffix("_drop"): layer.rate
        for layer in keras_b0.layers
        if layer.name.endswith("_drop")
    }
    ours = nnx.eval_shape(lambda: EfficientNet("b0", rngs=nnx.Rngs(0)))
    our_rates = {
        name: block.drop_path.rate
        for name, block in zip(ours.block_names, ours.blocks, strict=True)
        if block.drop_path is not None
    }
    assert our_rates.keys() == keras_rates.keys()
    for name, rate in keras_rates.items():
        assert our_rates[name] == pytest.approx(rate, abs=1e-7)


def test_shallow_b3_forward_matches_keras():
    """B3 coefficients (width 1.2: stem 40, top 1536; depth 1.4: ceil(1.4 r) blocks)."""
    keras = _keras()
    km = _keras_generic(keras, 1.2, 1.4, SHALLOW, (40, 33, 3))
    _randomize_keras_bn(km, seed=3)
    x = np.random.default_rng(4).normal(size=(2, 40, 33, 3)).astype(np.float32)
    ref = np.asarray(_after_preprocessing(keras, km)(x, training=False))
    ours = EfficientNet("b3", blocks_args=SHALLOW, rngs=nnx.Rngs(0))
    assert ours.block_names == (
        "block1a",
        "block1b",
        "block2a",
        "block2b",
        "block2c",
        "block3a",
        "block3b",
    )
    load_keras_efficientnet(ours, km)
    ours.eval()
    out = np.asarray(_forward(ours, jnp.asarray(x)))
    assert out.shape == ref.shape == (2, 5, 5, 1536)  # 3 stages: stride 8
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_train_mode_batch_norm_matches_keras():
    """Train mode: BN on batch stats, moving stats updated with momentum 0.99 (no drop path)."""
    keras = _keras()
    km = _keras_generic(keras, 1.0, 1.0, SHALLOW, (36, 36, 3), drop_connect_rate=0.0)
    _randomize_keras_bn(km, seed=5)
    ours = EfficientNet("b0", blocks_args=SHALLOW, drop_path_rate=0.0, rngs=nnx.Rngs(0))
    load_keras_efficientnet(ours, km)
    x = np.random.default_rng(6).normal(size=(4, 36, 36, 3)).astype(np.float32)
    ref = np.asarray(_after_preprocessing(keras, km)(x, training=True))
    out = np.asarray(_forward(ours, jnp.asarray(x)))
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    for name, (var, _) in keras_weight_targets(ours).items():
        if name.endswith("moving_mean") or name.endswith("moving_variance"):
            layer, weight = name.split("/")
            k_value = next(w for w in km.get_layer(layer).weights if w.name == weight).numpy()
            np.testing.assert_allclose(var[...], k_value, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def shallow_grads():
    """Loss gradients of a shallow B0 in train mode, without and with remat."""
    x = jnp.asarray(np.random.default_rng(7).normal(size=(4, 32, 32, 3)), jnp.float32)
    ct = jnp.asarray(np.random.default_rng(8).normal(size=(4, 4, 4, 1280)), jnp.float32)

    def loss(model):
        return jnp.sum(model(x) * ct)

    out = {}
    for remat in (False, True):
        model = EfficientNet(
            "b0", blocks_args=SHALLOW, drop_path_rate=0.5, remat=remat, rngs=nnx.Rngs(0)
        )
        out[remat] = nnx.jit(nnx.value_and_grad(loss))(model)
    return out


def test_gradients_reach_every_parameter_in_train_mode(shallow_grads):
    rms = {
        path: float(np.sqrt(np.mean(np.asarray(g[...], np.float64) ** 2)))
        for path, g in nnx.to_flat_state(shallow_grads[False][1])
    }
    # stem+top: 2 convs + 2 BN x 2 = 6; block1a (no expand): dw, bn x2, se x4, proj,
    # bn x2 = 10; blocks 2a, 2b, 3a add expand conv + bn x2 = 13 each.
    assert len(rms) == 6 + 10 + 3 * 13
    dead = {path for path, r in rms.items() if r < 1e-5 * max(rms.values())}
    # A project_bn bias adds a per-channel constant to the residual stream, which the
    # next 1x1 conv + batch-stat BN removes: exactly dead in train mode (in Keras too)
    # unless drop path rescales it per sample, as in block2b (blocks[2]).
    assert dead == {("blocks", i, "project_bn", "bias") for i in (0, 1, 3)}


def test_remat_gives_same_loss_and_gradients(shallow_grads):
    (l0, g0), (l1, g1) = shallow_grads[False], shallow_grads[True]
    np.testing.assert_allclose(l0, l1, rtol=1e-5)
    flat0, flat1 = nnx.to_flat_state(g0), nnx.to_flat_state(g1)
    atol = 1e-5 * max(float(np.abs(g[...]).max()) for _, g in flat0)
    for (p0, a), (p1, b) in zip(flat0, flat1, strict=True):
        assert p0 == p1
        np.testing.assert_allclose(a[...], b[...], rtol=1e-4, atol=atol, err_msg=str(p0))


def test_modes_switch_batch_stats_and_drop_path():
    model = EfficientNet("b0", blocks_args=SHALLOW, drop_path_rate=0.5, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(9).normal(size=(8, 32, 32, 3)), jnp.float32)
    fwd = nnx.jit(lambda m, x: m(x))
    stats0 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))

    # Train mode (the default after construction): BN stats move.
    fwd(model, x)
    stats1 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    assert all(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(stats0), jax.tree.leaves(stats1), strict=True)
    )

    # BN frozen but drop path on: outputs differ call to call (fresh per-sample masks).
    frozen_bn = nnx.view(model, use_running_average=True)
    a, b = np.asarray(fwd(frozen_bn, x)), np.asarray(fwd(frozen_bn, x))
    assert not np.allclose(a, b)
    assert all(
        np.array_equal(u, v)
        for u, v in zip(
            jax.tree.leaves(stats1),
            jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))),
            strict=True,
        )
    )

    # Eval: deterministic, stats untouched.
    model.eval()
    a, b = np.asarray(fwd(model, x)), np.asarray(fwd(model, x))
    np.testing.assert_array_equal(a, b)
    assert all(
        np.array_equal(u, v)
        for u, v in zip(
            jax.tree.leaves(stats1),
            jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))),
            strict=True,
        )
    )


def test_bfloat16_compute_keeps_float32_params_and_output():
    model = EfficientNet("b0", blocks_args=SHALLOW, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    out = _forward(model, jnp.ones((2, 33, 64, 3)))
    assert out.dtype == jnp.float32 and out.shape == (2, 5, 8, 1280)
    assert np.isfinite(np.asarray(out)).all()


def test_keras_import_rejects_mismatch_and_writes_nothing(keras_b0):
    """Fake Keras model from the real one: one weight missing, one extra, one mis-shaped."""

    class W:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def numpy(self):
            return self.value

    class L:
        def __init__(self, name, weights):
            self.name, self.weights = name, weights

    layers = [
        L(layer.name, [W(w.name, w.numpy()) for w in layer.weights]) for layer in keras_b0.layers
    ]
    by_name = {layer.name: layer for layer in layers}
    by_name["stem_bn"].weights.pop()  # moving_variance missing
    by_name["top_conv"].weights.append(W("bias", np.zeros(1280, np.float32)))
    by_name["block2a_dwconv"].weights[0].value = np.zeros((5, 5, 96, 1), np.float32)
    fake = type("FakeKeras", (), {"layers": layers})()

    ours = EfficientNet("b0", rngs=nnx.Rngs(0))
    weights = nnx.Any(nnx.Param, nnx.BatchStat)
    before = jax.tree.map(np.asarray, nnx.state(ours, weights))
    with pytest.raises(ValueError) as err:
        load_keras_efficientnet(ours, fake)
    msg = str(err.value)
    assert "stem_bn/moving_variance" in msg and "top_conv/bias" in msg
    assert "block2a_dwconv/kernel" in msg
    after = jax.tree.map(np.asarray, nnx.state(ours, weights))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )


def test_registry_creates_backbones_and_rejects_unknown():
    names = backbone_names()
    assert names == ["efficientnet_b0", "efficientnet_b0_shallow"] + [
        f"efficientnet_b{i}" for i in range(1, 8)
    ] + ["resnest101", "resnest200", "resnest50"]
    shallow, _ = create_backbone("efficientnet_b0_shallow", rngs=nnx.Rngs(0))
    assert shallow.block_names == ("block1a", "block2a", "block2b", "block3a")
    assert BACKBONES["efficientnet_b3"].default_resolution == 300
    module, dim = create_backbone("efficientnet_b0", rngs=nnx.Rngs(0), drop_path_rate=0.1)
    assert isinstance(module, EfficientNet) and dim == module.feature_dim == 1280
    assert module.blocks[-2].drop_path.rate == pytest.approx(0.1 * 14 / 16)  # block6d
    with pytest.raises(ValueError, match="efficientnet_b0"):
        create_backbone("resnet50", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="known"):
        EfficientNet("b9", rngs=nnx.Rngs(0))
