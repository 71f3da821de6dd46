"""ResNeSt against timm's resnest50d/101e/200e as the oracle (committed fixtures, no torch)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gld_jax.models.layers import traceable_rngs
from gld_jax.models.registry import BACKBONES, create_backbone
from gld_jax.models.resnest import (
    ResNeSt,
    ResNeStArgs,
    avg_pool_2x2_ceil,
    avg_pool_3x3,
    max_pool_3x3_s2,
)
from gld_jax.models.timm_import import load_timm_state_dict, timm_weight_targets

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# sum(p.numel() for p in timm.create_model(name, num_classes=0).parameters()), and
# pretrained_cfg input_size, measured with timm 1.0.31 / torch 2.13.0 on 2026-11-27.
TIMM_PARAMS = {"resnest50": 25_434_240, "resnest101": 46_226_016, "resnest200": 68_152_544}
TIMM_RESOLUTION = {"resnest50": 224, "resnest101": 256, "resnest200": 320}
# The reduced net of tests/fixtures/make_reference_fixtures.py (timm: 149,008 params).
REDUCED = ResNeStArgs(
    layers=(2, 1, 1, 1), stem_width=16, channels=(8, 16, 32, 64), default_resolution=224
)


def _n_params(model, kind=nnx.Param):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, kind)))


def _forward(model, x):
    return nnx.jit(lambda m, x: m(x))(model, x)


@pytest.fixture(scope="module")
def ref():
    f = np.load(os.path.join(FIXTURES, "timm_resnest_reduced.npz"))
    return {k: f[k] for k in f.files}


def _reduced_from_timm(ref, **kw):
    model = ResNeSt("resnest50", args=REDUCED, rngs=nnx.Rngs(0), **kw)
    sd = {k.removeprefix("sd/"): v for k, v in ref.items() if k.startswith("sd/")}
    skipped = load_timm_state_dict(model, sd)
    assert skipped and all(k.endswith("num_batches_tracked") for k in skipped)
    return model


def test_fixture_records_its_reference_versions(ref):
    versions = json.loads(str(ref["versions"]))
    assert versions["timm"] == "1.0.31" and versions["torch"].startswith("2.13.0")


@pytest.mark.parametrize(
    "name",
    [
        "resnest50",
        "resnest101",
        "resnest200",
    ],
)
def test_parameter_counts_and_resolution_equal_timm(name):
    abstract = nnx.eval_shape(lambda: ResNeSt(name, rngs=traceable_rngs(0)))
    assert _n_params(abstract) == TIMM_PARAMS[name]
    assert abstract.feature_dim == 2048
    assert BACKBONES[name].default_resolution == TIMM_RESOLUTION[name]


def test_reduced_parameter_count_equals_timm(ref):
    model = nnx.eval_shape(lambda: ResNeSt("resnest50", args=REDUCED, rngs=nnx.Rngs(0)))
    assert _n_params(model) == 149_008
    # Params + BN running stats = every tensor of timm's state dict but the BN counters.
    n_sd = sum(
        v.size
        for k, v in ref.items()
        if k.startswith("sd/") and not k.endswith("num_batches_tracked")
    )
    assert _n_params(model) + _n_params(model, nnx.BatchStat) == n_sd


def test_eval_forward_matches_timm(ref):
    model = _reduced_from_timm(ref)
    model.eval()
    out = np.asarray(_forward(model, jnp.asarray(ref["input"])))
    # 45x38 input: stem conv 23x19, max pool 12x10, stages 12x10, 6x5, 3x3, 2x2.
    assert out.shape == ref["eval_out"].shape == (2, 2, 2, 256)
    scale = np.abs(ref["eval_out"]).max()
    assert scale > 1.0
    assert np.abs(out - ref["eval_out"]).max() <= 1e-4 * scale


def test_train_mode_batch_norm_matches_timm(ref):
    model = _reduced_from_timm(ref, drop_path_rate=0.0)
    x = jnp.asarray(ref["input"])
    out = np.asarray(_forward(model, x))
    scale = np.abs(ref["train_out"]).max()
    assert np.abs(out - ref["train_out"]).max() <= 1e-4 * scale
    # Running stats after one pass (momentum 0.1 in torch terms). torch updates the
    # running variance with the unbiased batch variance (x n/(n-1)), flax with the
    # biased one, so ours = 0.9 v0 + 0.1 s2_biased, torch's = 0.9 v0 + 0.1 s2 n/(n-1):
    # ours = 0.9 v0 + (torch - 0.9 v0) (n-1)/n, n = values per channel in the batch.
    sizes = _bn_batch_sizes(model, x)
    for key, (var, _) in timm_weight_targets(model).items():
        if key.endswith("running_mean"):
            np.testing.assert_allclose(
                var[...], ref[f"after_train/{key}"], rtol=1e-4, atol=1e-5, err_msg=key
            )
        elif key.endswith("running_var"):
            n = sizes[key.removesuffix(".running_var")]
            v0, torch_v = ref[f"sd/{key}"], ref[f"after_train/{key}"]
            expected = 0.9 * v0 + (torch_v - 0.9 * v0) * (n - 1) / n
            np.testing.assert_allclose(var[...], expected, rtol=1e-4, atol=1e-5, err_msg=key)


def _bn_batch_sizes(model, x):
    """Values per channel each BN sees on x: N*H*W; the attention BN sees N (1x1 maps)."""
    n = x.shape[0]
    h, w = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1  # stem conv /2
    sizes = {k: n * h * w for k in ("conv1.1", "conv1.4", "bn1")}
    h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # max pool /2
    for s, stage in enumerate(model.stages):
        for i, block in enumerate(stage):
            p = f"layer{s + 1}.{i}"
            sizes[f"{p}.bn1"] = sizes[f"{p}.conv2.bn0"] = n * h * w
            sizes[f"{p}.conv2.bn1"] = n
            if block.avd_stride:
                h, w = -(-h // 2), -(-w // 2)
            sizes[f"{p}.bn3"] = sizes[f"{p}.downsample.2"] = n * h * w
    return sizes


def test_pools_match_torch_definitions():
    """Hand-computed on a 3x3 ramp 1..9 (one channel)."""
    x = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    # MaxPool2d(3, 2, pad 1) -> 2x2: windows rows/cols {0,1},{1,2}: max 5, 6, 8, 9.
    np.testing.assert_array_equal(max_pool_3x3_s2(x)[0, :, :, 0], [[5, 6], [8, 9]])
    # AvgPool2d(3, 2, pad 1), pad counted: top-left (1+2+4+5)/9 = 4/3; bottom-right
    # (5+6+8+9)/9 = 28/9.
    np.testing.assert_allclose(
        avg_pool_3x3(x, 2)[0, :, :, 0], [[12 / 9, 16 / 9], [24 / 9, 28 / 9]], rtol=1e-6
    )
    # AvgPool2d(2, 2, ceil_mode, pad not counted): (1+2+4+5)/4 = 3, (3+6)/2 = 4.5,
    # (7+8)/2 = 7.5, 9/1 = 9.
    np.testing.assert_allclose(avg_pool_2x2_ceil(x)[0, :, :, 0], [[3, 4.5], [7.5, 9]])


@pytest.fixture(scope="module")
def grads():
    """Loss gradients of the reduced net in train mode, without and with remat."""
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 32, 32, 3)), jnp.float32)
    ct = jnp.asarray(np.random.default_rng(4).normal(size=(4, 1, 1, 256)), jnp.float32)

    def loss(model):
        return jnp.sum(model(x) * ct)

    out = {}
    for remat in (False, True):
        model = ResNeSt(
            "resnest50", args=REDUCED, drop_path_rate=0.0, remat=remat, rngs=nnx.Rngs(0)
        )
        out[remat] = nnx.jit(nnx.value_and_grad(loss))(model)
    return out


def test_gradients_reach_every_parameter(grads):
    flat = nnx.to_flat_state(grads[False][1])
    rms = {path: float(np.sqrt(np.mean(np.asarray(g[...], np.float64) ** 2))) for path, g in flat}
    # stem 3 convs + 3 BN x 2 = 9; each of 5 blocks: conv1, bn1 x2, conv2 (conv, bn0 x2,
    # fc1 x2, bn1 x2, fc2 x2 = 9), conv3, bn3 x2 = 15; the first blocks of stages 2-4
    # add a downsample conv + BN x 2 = 3 (stage 1's input already has 2*16 = 4*8 channels
    # at stride 1, so it has none).
    assert len(rms) == 9 + 5 * 15 + 3 * 3
    # fc1's bias feeds a batch-stat BN that subtracts the batch mean, so it is exactly
    # dead in train mode (in timm too); every other parameter gets a gradient.
    dead = {path for path, r in rms.items() if r < 1e-6 * max(rms.values())}
    blocks = [(s, i) for s, n in enumerate(REDUCED.layers) for i in range(n)]
    assert dead == {("stages", s, i, "conv2", "fc1", "bias") for s, i in blocks}


def test_remat_gives_same_loss_and_gradients(grads):
    (l0, g0), (l1, g1) = grads[False], grads[True]
    np.testing.assert_allclose(l0, l1, rtol=1e-4)
    flat0, flat1 = nnx.to_flat_state(g0), nnx.to_flat_state(g1)
    # float32 reassociation inside the recomputed blocks: 1e-4 of the largest gradient
    # (the dead fc1 biases are pure rounding noise on both sides).
    atol = 1e-4 * max(float(np.abs(g[...]).max()) for _, g in flat0)
    for (p0, a), (p1, b) in zip(flat0, flat1, strict=True):
        assert p0 == p1
        np.testing.assert_allclose(a[...], b[...], rtol=1e-3, atol=atol, err_msg=str(p0))


def test_batch_norm_updates_in_train_mode_only():
    model = ResNeSt("resnest50", args=REDUCED, drop_path_rate=0.0, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 32, 32, 3)), jnp.float32)
    stats0 = [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]
    _forward(model, x)
    stats1 = [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]
    assert all(not np.array_equal(a, b) for a, b in zip(stats0, stats1, strict=True))
    model.eval()
    a, b = np.asarray(_forward(model, x)), np.asarray(_forward(model, x))
    np.testing.assert_array_equal(a, b)
    stats2 = [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]
    assert all(np.array_equal(a, b) for a, b in zip(stats1, stats2, strict=True))


def test_drop_path_schedule_and_train_mode_randomness():
    model = ResNeSt("resnest50", args=REDUCED, drop_path_rate=0.4, rngs=nnx.Rngs(0))
    blocks = [b for stage in model.stages for b in stage]
    # timm: rate * i / (n - 1) over the 5 blocks: 0, 0.1, 0.2, 0.3, 0.4 (block 0 has none).
    assert blocks[0].drop_path is None
    assert [b.drop_path.rate for b in blocks[1:]] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    x = jnp.asarray(np.random.default_rng(6).normal(size=(8, 32, 32, 3)), jnp.float32)
    frozen_bn = nnx.view(model, use_running_average=True)
    a, b = np.asarray(_forward(frozen_bn, x)), np.asarray(_forward(frozen_bn, x))
    assert not np.allclose(a, b)
    model.eval()
    np.testing.assert_array_equal(_forward(model, x), _forward(model, x))


def test_bfloat16_compute_keeps_float32_params_and_output():
    model = nnx.eval_shape(
        lambda: create_backbone("resnest50", rngs=nnx.Rngs(0), dtype=jnp.bfloat16)[0]
    )
    assert model.feature_dim == 2048
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    small = ResNeSt("resnest50", args=REDUCED, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    out = _forward(small, jnp.ones((2, 33, 64, 3)))
    assert out.dtype == jnp.float32 and out.shape == (2, 2, 2, 256)
    assert np.isfinite(np.asarray(out)).all()


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="resnest101"):
        ResNeSt("resnest26", rngs=nnx.Rngs(0))
