"""Sub-center ArcFace against independent PyTorch implementations, from fixtures
made by tests/fixtures/make_loss_fixtures.py (torch is not needed here):
pytorch-metric-learning's SubCenterArcFaceLoss, and the 3rd-place GLR2020
adaptive-margin formula including targets where theta + m passes pi."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gld_jax.losses import dynamic_margins, sub_center_arcface_loss

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "arcface_reference.npz")


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(autouse=True, scope="module")
def x64():
    jax.config.update("jax_enable_x64", True)  # the references ran in float64
    yield
    jax.config.update("jax_enable_x64", False)


def _mean_loss_and_grads(emb, centers, labels, margins, scale):
    def f(e, c):
        return jnp.mean(sub_center_arcface_loss(e, c, labels, margins, scale))

    return jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(emb), jnp.asarray(centers))


def test_matches_pytorch_metric_learning(ref):
    c = ref["pml_centers"].shape[0]
    margins = np.full(c, float(ref["pml_margin"]))  # PML's 28.6 degrees, in radians
    loss, (ge, gc) = _mean_loss_and_grads(
        ref["pml_embeddings"],
        ref["pml_centers"],
        ref["pml_labels"],
        margins,
        float(ref["pml_scale"]),
    )
    np.testing.assert_allclose(loss, ref["pml_loss"], rtol=1e-5)
    np.testing.assert_allclose(ge, ref["pml_grad_embeddings"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(gc, ref["pml_grad_centers"], rtol=1e-5, atol=1e-8)


def test_matches_the_recipe_adaptive_margin_past_pi(ref):
    assert ref["ada_past_pi"].any()  # the fixture exercises the theta + m > pi branch
    margins = dynamic_margins(ref["ada_counts"])
    np.testing.assert_allclose(margins, ref["ada_margins"], rtol=1e-6)
    per_example = sub_center_arcface_loss(
        jnp.asarray(ref["ada_embeddings"]),
        jnp.asarray(ref["ada_centers"]),
        ref["ada_labels"],
        jnp.asarray(ref["ada_margins"]),
        float(ref["ada_scale"]),
    )
    np.testing.assert_allclose(per_example, ref["ada_loss"], rtol=1e-5)
    _, (ge, gc) = _mean_loss_and_grads(
        ref["ada_embeddings"],
        ref["ada_centers"],
        ref["ada_labels"],
        ref["ada_margins"],
        float(ref["ada_scale"]),
    )
    np.testing.assert_allclose(ge, ref["ada_grad_embeddings"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(gc, ref["ada_grad_centers"], rtol=1e-5, atol=1e-8)
