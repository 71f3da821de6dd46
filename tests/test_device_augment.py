"""Device augmentation (gld_jax.data.device_augment) against the host's TF ops:
the same geometry for the same parameters, the same cutout hole for the same
uniforms, the recipe's ranges, sharding-independent draws, and a train step
that applies them."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from gld_jax.data import augment
from gld_jax.data.augment_config import AugmentConfig, resolve_augment_on
from gld_jax.data.device_augment import (
    apply_params,
    augment_batch,
    cutout_bounds,
    draw_params,
    warp_matrix,
)

SIZE = 48


def _image(seed: int = 0) -> np.ndarray:
    # A smooth image plus noise: bilinear sampling is exercised on both.
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    base = 127 + 100 * np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None]
    noisy = base + rng.normal(0, 20, (SIZE, SIZE, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _params(angle, scale, shift, flip, cutout=False, lo=(0, 0), hi=(0, 0)):
    return {
        "flip": jnp.array([flip]),
        "ssr": jnp.array([True]),
        "angle": jnp.array([angle], jnp.float32),
        "scale": jnp.array([scale], jnp.float32),
        "shift": jnp.array([shift], jnp.float32),
        "cutout": jnp.array([cutout]),
        "cutout_lo": jnp.array([lo], jnp.int32),
        "cutout_hi": jnp.array([hi], jnp.int32),
    }


def _near_border(angle, scale, shift, flip) -> np.ndarray:
    """Output pixels whose sample point lies within one pixel outside the image,
    where TF blends each out-of-image neighbour with the fill and ours fills
    the whole sample: bool [S, S]."""
    matrix, offset = (np.asarray(a) for a in warp_matrix(angle, scale, np.array(shift), flip, SIZE))
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    r = matrix[0, 0] * rows + matrix[0, 1] * cols + offset[0]
    c = matrix[1, 0] * rows + matrix[1, 1] * cols + offset[1]

    def edge(v):
        return ((v > -1) & (v < 0)) | ((v > SIZE - 1) & (v < SIZE))

    return edge(r) | edge(c)


@pytest.mark.parametrize(
    "angle,scale,shift,flip",
    [
        (0.0, 1.0, (0.0, 0.0), False),
        (0.0, 1.0, (0.0, 0.0), True),
        (10.0, 1.0, (0.0, 0.0), False),
        (-7.5, 1.2, (0.2, -0.1), False),
        (4.0, 0.8, (-0.2, 0.15), True),
        (-10.0, 0.9, (0.05, 0.2), True),
    ],
)
def test_device_warp_equals_the_host_warp(angle, scale, shift, flip):
    """Flip then shift-scale-rotate: the device's one gather equals TF's
    tf.reverse + ImageProjectiveTransformV3 within +-1 (TF truncates to uint8,
    the device keeps floats), except within a pixel of the image's edge."""
    image = _image()
    host = tf.reverse(image, axis=[1]) if flip else tf.constant(image)
    host = augment.affine_transform(host, angle, scale, tf.constant(shift, tf.float32)).numpy()
    device = np.asarray(apply_params(image[None], _params(angle, scale, shift, flip))[0])
    keep = ~_near_border(angle, scale, shift, flip)
    diff = np.abs(np.round(device).astype(int) - host.astype(int))[keep]
    assert keep.mean() > 0.8
    assert diff.max() <= 1, (diff.max(), (diff > 1).mean())
    if angle == 0 and scale == 1 and shift == (0.0, 0.0):  # integer coordinates: exact
        np.testing.assert_array_equal(device, host)


def test_cutout_hole_is_the_host_formula():
    """For the uniforms TF draws from a seed, the device's hole is the zero
    rectangle TF's random_cutout leaves."""
    ones = tf.ones([SIZE, SIZE, 3], tf.uint8)
    for s in range(20):
        seed = tf.constant([s, 7], tf.int64)
        host = augment.random_cutout(ones, seed, prob=1.0, max_frac=0.4).numpy()[..., 0] == 0
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        u = tf.random.stateless_uniform((4,), seeds[1]).numpy()
        bounds = cutout_bounds(jnp.asarray(u[None]), SIZE, 0.4)
        lo, hi = np.asarray(bounds["cutout_lo"][0]), np.asarray(bounds["cutout_hi"][0])
        params = _params(0.0, 1.0, (0.0, 0.0), False, cutout=True, lo=lo, hi=hi)
        device = np.asarray(apply_params(np.ones((1, SIZE, SIZE, 3), np.uint8), params))
        np.testing.assert_array_equal(device[0, ..., 0] == 0, host)
        assert host.any()


def test_drawn_parameters_follow_the_recipe():
    """Coins at the recipe's probabilities (within 5 sigma) and every range
    uniform over the recipe's limits (Kolmogorov-Smirnov distance < 0.02 for
    20,000 draws, where the 1% critical value is 0.0115)."""
    config = AugmentConfig()
    n = 20_000
    p = jax.device_get(draw_params(jax.random.key(3), n, 256, config))
    for coin, prob in [("flip", 0.5), ("ssr", 0.7), ("cutout", 0.5)]:
        sigma = math.sqrt(prob * (1 - prob) / n)
        assert abs(p[coin].mean() - prob) < 5 * sigma, coin

    def ks_uniform(x, lo, hi):
        x = np.sort((np.asarray(x) - lo) / (hi - lo))
        return np.max(np.abs(x - (np.arange(1, len(x) + 1) / len(x))))

    assert ks_uniform(p["angle"], -10, 10) < 0.02
    assert ks_uniform(p["scale"], 0.8, 1.2) < 0.02
    assert ks_uniform(p["shift"][:, 0], -0.2, 0.2) < 0.02
    assert ks_uniform(p["shift"][:, 1], -0.2, 0.2) < 0.02
    sides = p["cutout_hi"] - p["cutout_lo"]
    assert sides.min() >= 0 and sides.max() <= math.floor(0.4 * 256)
    assert p["cutout_lo"].min() >= 0 and p["cutout_hi"].max() <= 256
    # A hole's side is uniform on 1..102 before clipping, so holes can reach the limit.
    assert sides.max() == math.floor(0.4 * 256) and (sides >= 1).all()


def test_draws_do_not_depend_on_the_batch_sharding():
    """The same key gives every example the same augmentation whether the batch
    is on one device or split over eight (what keeps multi-host runs and
    resumes on other slices identical)."""
    images = np.stack([_image(i) for i in range(8)])
    key = jax.random.key(11)
    config = AugmentConfig()
    one = np.asarray(jax.jit(lambda x: augment_batch(x, key, config))(images))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    split = jax.jit(lambda x: augment_batch(x, key, config), out_shardings=sharding)(
        jax.device_put(images, sharding)
    )
    np.testing.assert_allclose(np.asarray(split), one, rtol=0, atol=2e-3)  # float reassociation
    assert not np.allclose(one, images)  # something was augmented


def test_resolve_augment_on():
    assert resolve_augment_on("auto", "cpu") == "host"
    assert resolve_augment_on("auto", "tpu") == "host"
    assert resolve_augment_on("auto", "gpu") == "device"
    assert resolve_augment_on("host", "tpu") == "host"
    assert resolve_augment_on("device", "cpu") == "device"
    with pytest.raises(ValueError, match="augment_on"):
        resolve_augment_on("gpu", "cpu")


def test_the_step_augments_with_its_step_key():
    """train_step_fn augments through step.augmented_batch: the draw is a function
    of (stage key, step) only, so a resumed run draws the same, and another step
    draws anew. (The trainer's resume test runs whole steps this way.)"""
    from gld_jax.train import step as step_lib

    batch = {"image": np.stack([_image(i) for i in range(4)]), "label": np.arange(4)}
    key, config = jax.random.key(2), AugmentConfig(ssr_prob=1.0)
    at5 = jax.jit(lambda b: step_lib.augmented_batch(b, key, 5, config))(batch)
    want = augment_batch(
        batch["image"],
        jax.random.fold_in(jax.random.fold_in(key, step_lib._AUGMENT_STREAM), 5),
        config,
    )
    np.testing.assert_allclose(np.asarray(at5["image"]), np.asarray(want), atol=2e-3)
    np.testing.assert_array_equal(at5["label"], batch["label"])
    at6 = step_lib.augmented_batch(batch, key, 6, config)
    assert np.abs(np.asarray(at6["image"]) - np.asarray(at5["image"])).mean() > 5
    assert np.abs(np.asarray(at5["image"]) - batch["image"]).mean() > 5  # really augmented
