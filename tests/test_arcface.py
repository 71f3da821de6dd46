"""Sub-center ArcFace and dynamic margins against a from-the-definition oracle.

The oracle is plain Python/NumPy float64 with explicit loops over examples,
classes and sub-centers, and writes the margin as an angle
(``cos(arccos(c) + m)``), not the ``cos/sin`` expansion the jax code uses.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gld_jax.losses import (
    arcface_logits,
    dynamic_margins,
    sub_center_arcface_loss,
    sub_center_cosine,
)

# ----------------------------------------------------------------------------- oracle


def _ref_cosine(emb, centers):
    n_ex, (n_cls, n_sub, _) = emb.shape[0], centers.shape
    out = np.zeros((n_ex, n_cls))
    for n in range(n_ex):
        e = emb[n] / math.sqrt(sum(v * v for v in emb[n]))
        for c in range(n_cls):
            best = -math.inf
            for k in range(n_sub):
                w = centers[c, k] / math.sqrt(sum(v * v for v in centers[c, k]))
                best = max(best, float(np.dot(e, w)))
            out[n, c] = best
    return out


def _ref_logits(cos, labels, margins, scale):
    out = np.array(cos, dtype=np.float64)
    for n, y in enumerate(labels):
        m = margins[y]
        theta = math.acos(min(1.0, max(-1.0, cos[n, y])))
        if theta + m < math.pi:
            out[n, y] = math.cos(theta + m)
        else:  # the recipe's fallback past pi - m: cos(theta) - m * sin(m)
            out[n, y] = cos[n, y] - m * math.sin(m)
    return out * scale


def _ref_loss(emb, centers, labels, margins, scale):
    z = _ref_logits(_ref_cosine(emb, centers), labels, margins, scale)
    losses = []
    for n, y in enumerate(labels):
        zmax = max(z[n])
        lse = zmax + math.log(sum(math.exp(v - zmax) for v in z[n]))
        losses.append(lse - z[n, y])
    return np.array(losses)


def _problem(seed=0, n=5, c=4, k=3, d=6):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d))
    centers = rng.normal(size=(c, k, d))
    labels = rng.integers(0, c, size=n)
    margins = rng.uniform(0.05, 0.5, size=c)
    return emb, centers, labels, margins


# ----------------------------------------------------------------------------- margins


def test_dynamic_margins_hand_values():
    # t = n ** -0.25: 1 -> 1, 16 -> 1/2, 81 -> 1/3, 10000 -> 1/10. min t = 0.1, max t = 1.
    # m = 0.45 * (t - 0.1) / 0.9 + 0.05:
    #   t=1   -> 0.45 * 0.9 / 0.9 + 0.05 = 0.50
    #   t=1/2 -> 0.45 * 0.4 / 0.9 + 0.05 = 0.20 + 0.05 = 0.25
    #   t=1/3 -> 0.45 * (7/30) / 0.9 + 0.05 = 7/60 + 0.05 = 0.1666...
    #   t=0.1 -> 0 + 0.05 = 0.05
    m = np.asarray(dynamic_margins([1, 16, 81, 10000]))
    assert m.dtype == np.float32
    np.testing.assert_allclose(m, [0.5, 0.25, 7 / 60 + 0.05, 0.05], atol=1e-7)


def test_dynamic_margins_match_recipe_formula_and_span():
    counts = np.random.default_rng(1).integers(2, 5000, size=300)
    # The recipe's own expression: tmp = sqrt(1 / sqrt(n)).
    tmp = np.sqrt(1 / np.sqrt(counts))
    expected = (tmp - tmp.min()) / (tmp.max() - tmp.min()) * 0.45 + 0.05
    m = np.asarray(dynamic_margins(counts))
    np.testing.assert_allclose(m, expected, atol=1e-7)
    assert m.min() == np.float32(0.05) and m.max() == np.float32(0.5)
    assert m[np.argmin(counts)] == m.max()  # rarest class, largest margin


def test_dynamic_margins_edge_cases():
    # All equal: midpoint 0.05 + 0.45 / 2 = 0.275.
    np.testing.assert_allclose(np.asarray(dynamic_margins([7, 7, 7])), [0.275] * 3, atol=1e-7)
    # Absent class (count 0) gets the max margin; the others keep the margins
    # computed from present classes only ([1, 16] -> [0.5, 0.05]).
    np.testing.assert_allclose(np.asarray(dynamic_margins([1, 0, 16])), [0.5, 0.5, 0.05])
    for bad in ([], [0, 0], [1, -1], [[1, 2]], [1, float("nan")]):
        with pytest.raises(ValueError):
            dynamic_margins(bad)


# ----------------------------------------------------------------------------- values


def test_cosine_logits_loss_match_oracle_float64():
    emb, centers, labels, margins = _problem()
    with jax.enable_x64(True):
        cos = np.asarray(sub_center_cosine(emb, centers))
        z = np.asarray(arcface_logits(cos, labels, margins, 30.0))
        loss = np.asarray(sub_center_arcface_loss(emb, centers, labels, margins, 30.0))
    ref_cos = _ref_cosine(emb, centers)
    np.testing.assert_allclose(cos, ref_cos, atol=1e-12)
    np.testing.assert_allclose(z, _ref_logits(ref_cos, labels, margins, 30.0), atol=1e-10)
    np.testing.assert_allclose(loss, _ref_loss(emb, centers, labels, margins, 30.0), atol=1e-10)


def test_loss_matches_oracle_float32_at_recipe_scale():
    emb, centers, labels, margins = _problem(seed=3, n=8, c=7)
    loss = sub_center_arcface_loss(
        emb.astype(np.float32), centers.astype(np.float32), labels, margins, 80.0
    )
    assert loss.dtype == jnp.float32 and loss.shape == (8,)
    ref = _ref_loss(emb, centers, labels, margins, 80.0)
    np.testing.assert_allclose(np.asarray(loss), ref, rtol=1e-5, atol=1e-4)


def test_margin_touches_only_the_target_logit():
    emb, centers, labels, margins = _problem(seed=2)
    cos = np.asarray(sub_center_cosine(emb, centers))
    z = np.asarray(arcface_logits(cos, labels, margins, 10.0))
    changed = ~np.isclose(z, 10.0 * cos, atol=1e-6)
    target = np.zeros_like(changed)
    target[np.arange(len(labels)), labels] = True
    np.testing.assert_array_equal(changed, target)


def test_k1_is_plain_arcface():
    # K=1: cosine is the plain normalised dot product; logits are s*cos(theta+m).
    rng = np.random.default_rng(4)
    emb, w = rng.normal(size=(4, 5)), rng.normal(size=(3, 5))
    labels, m, s = np.array([0, 2, 1, 2]), 0.3, 16.0
    cos = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (
        w / np.linalg.norm(w, axis=1, keepdims=True)
    ).T
    expected = s * cos
    for n, y in enumerate(labels):
        expected[n, y] = s * np.cos(np.arccos(cos[n, y]) + m)
    assert np.all(np.arccos(cos[np.arange(4), labels]) + m < np.pi)  # main branch only
    got = arcface_logits(sub_center_cosine(emb, w[:, None, :]), labels, m, s)
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5)


def test_subcenter_max_picks_the_closest_subcenter():
    # Class 0 has sub-centers along e0 and e1; class 1 along -e0 and e2.
    centers = np.array([[[1.0, 0, 0], [0, 1, 0]], [[-1, 0, 0], [0, 0, 1]]])
    emb = np.array([[0.0, 2.0, 0.0]])  # on class 0's second sub-center
    np.testing.assert_allclose(np.asarray(sub_center_cosine(emb, centers)), [[1.0, 0.0]])


def test_branch_past_pi_minus_m():
    # cos = -0.95: theta = acos(-0.95) = 2.8240 rad; m = 0.5 -> theta + m = 3.324 > pi.
    # threshold cos(pi - 0.5) = -cos(0.5) = -0.87758; -0.95 < -0.87758 -> fallback:
    # phi = -0.95 - 0.5 * sin(0.5) = -0.95 - 0.5 * 0.479426 = -1.189713.
    # Target at cos = 0.6 (theta = 0.9273) stays on the main branch:
    # phi = cos(0.9273 + 0.5) = 0.6 cos 0.5 - 0.8 sin 0.5 = 0.5265495 - 0.3835404 = 0.1430091.
    cos = np.array([[-0.95, 0.2], [0.1, 0.6]], np.float32)
    z = np.asarray(arcface_logits(cos, np.array([0, 1]), np.array([0.5, 0.5]), 2.0))
    np.testing.assert_allclose(z, [[2 * -1.189713, 0.4], [0.2, 2 * 0.1430091]], atol=2e-6)
    np.testing.assert_allclose(
        z / 2, _ref_logits(cos.astype(np.float64), [0, 1], [0.5, 0.5], 1.0), atol=1e-6
    )


def test_zero_embedding_is_finite():
    centers = np.random.default_rng(0).normal(size=(3, 2, 4)).astype(np.float32)
    loss_fn = lambda e: jnp.sum(sub_center_arcface_loss(e, centers, jnp.array([1]), 0.3, 30.0))
    loss, grad = jax.value_and_grad(loss_fn)(jnp.zeros((1, 4)))
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


def test_embedding_on_its_center_has_finite_gradient():
    centers = np.random.default_rng(0).normal(size=(3, 2, 4)).astype(np.float32)
    loss_fn = lambda e: jnp.sum(sub_center_arcface_loss(e, centers, jnp.array([2]), 0.5, 80.0))
    grad = jax.grad(loss_fn)(jnp.asarray(centers[2, 1][None] * 3.0))
    assert np.all(np.isfinite(grad))


# ----------------------------------------------------------------------------- gradients


def _finite_difference(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def test_gradients_match_finite_differences_of_oracle():
    emb, centers, labels, margins = _problem(seed=5, n=4, c=3, k=2, d=4)
    # One example deep in the theta + m > pi branch: nearly antiparallel to both
    # sub-centers of class 0 (cos ~ -0.99 < cos(pi - 0.5) = -0.878).
    noise = np.random.default_rng(9).normal(size=(2, 4)) * 0.05
    centers[0, 1] = 2.0 * centers[0, 0] + noise[0]
    emb[0] = -centers[0, 0] + noise[1]
    labels[0], margins[0] = 0, 0.5
    scale = 20.0

    def jax_loss(e, w):
        return jnp.mean(sub_center_arcface_loss(e, w, labels, margins, scale))

    with jax.enable_x64(True):
        cos0 = np.asarray(sub_center_cosine(emb, centers))[0, 0]
        ge, gw = jax.jit(jax.grad(jax_loss, argnums=(0, 1)))(emb, centers)
    assert cos0 < math.cos(math.pi - margins[0])  # branch really exercised
    ref_ge = _finite_difference(lambda e: _ref_loss(e, centers, labels, margins, scale).mean(), emb)
    ref_gw = _finite_difference(lambda w: _ref_loss(emb, w, labels, margins, scale).mean(), centers)
    np.testing.assert_allclose(np.asarray(ge), ref_ge, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw), ref_gw, atol=1e-5)

    # float32 gradients agree too (looser, it is float32).
    ge32, gw32 = jax.jit(jax.grad(jax_loss, argnums=(0, 1)))(
        emb.astype(np.float32), centers.astype(np.float32)
    )
    np.testing.assert_allclose(np.asarray(ge32), ref_ge, atol=1e-4)
    np.testing.assert_allclose(np.asarray(gw32), ref_gw, atol=1e-4)


# ----------------------------------------------------------------------------- dtypes, jit


def test_bf16_inputs_give_float32():
    emb, centers, labels, margins = _problem(seed=6)
    e16, w16 = jnp.asarray(emb, jnp.bfloat16), jnp.asarray(centers, jnp.bfloat16)
    cos = sub_center_cosine(e16, w16)
    loss = sub_center_arcface_loss(e16, w16, labels, margins, 80.0)
    assert cos.dtype == jnp.float32 and loss.dtype == jnp.float32
    # Same numbers as float32 math on the bf16-rounded inputs.
    ref = _ref_loss(
        np.asarray(e16.astype(jnp.float32), np.float64),
        np.asarray(w16.astype(jnp.float32), np.float64),
        labels,
        margins,
        80.0,
    )
    np.testing.assert_allclose(np.asarray(loss), ref, rtol=1e-5, atol=1e-4)


def test_jit_and_scalar_margin():
    emb, centers, labels, _ = _problem(seed=7)
    f = jax.jit(sub_center_arcface_loss, static_argnames="scale")
    got = f(emb.astype(np.float32), centers.astype(np.float32), labels, 0.3, scale=30.0)
    ref = _ref_loss(emb, centers, labels, np.full(centers.shape[0], 0.3), 30.0)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)


def test_class_axis_sharded_over_devices():
    # The head shards over classes on a pod; the loss must give the same numbers.
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = np.array(jax.devices()[:8])
    if devices.size < 8:
        pytest.skip("needs 8 (fake) devices")
    mesh = Mesh(devices.reshape(2, 4), ("data", "model"))
    emb, centers, labels, margins = _problem(seed=8, n=8, c=16)
    emb, centers = emb.astype(np.float32), centers.astype(np.float32)
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
    loss = jax.jit(sub_center_arcface_loss, static_argnames="scale")(
        put(emb, PartitionSpec("data")),
        put(centers, PartitionSpec("model")),
        put(labels, PartitionSpec("data")),
        put(margins.astype(np.float32), PartitionSpec("model")),
        scale=80.0,
    )
    ref = _ref_loss(emb.astype(np.float64), centers.astype(np.float64), labels, margins, 80.0)
    np.testing.assert_allclose(np.asarray(loss), ref, rtol=1e-5, atol=1e-4)
