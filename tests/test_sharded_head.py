"""The class-sharded Sub-center head: the loss and its gradients on any
(data, model) mesh equal the unsharded computation, the compiled program never
gathers the full weight matrix or the full logits onto one device, and each
device holds 1/model of the head."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from head_problem import C, D, K, N, loss_and_grads, problem
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gld_jax.losses import sub_center_arcface_loss
from gld_jax.train import mesh as mesh_lib


def _sharded(mesh):
    data = NamedSharding(mesh, P("data"))
    head = NamedSharding(mesh, P("model", None, None))
    rep = NamedSharding(mesh, P())
    return jax.jit(
        loss_and_grads,
        in_shardings=(data, head, data, rep),
        out_shardings=(rep, (data, head)),
    )


@pytest.mark.parametrize("shape", [(8, 1), (4, 2), (2, 4), (1, 8)])
def test_shardedloss_and_grads_equal_unsharded(shape):
    emb, centers, labels, margins = problem()
    ref_loss, (ref_ge, ref_gc) = jax.jit(loss_and_grads)(emb, centers, labels, margins)
    mesh = mesh_lib.make_mesh(*shape)
    loss, (ge, gc) = _sharded(mesh)(emb, centers, labels, margins)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(ge, ref_ge, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gc, ref_gc, rtol=1e-5, atol=1e-7)
    # the gradient of the head comes back class-sharded: 1/model of it per device
    assert gc.addressable_shards[0].data.shape == (C // shape[1], K, D)


def _gathered_shapes(hlo: str) -> list[str]:
    """Result shapes of every all-gather in compiled HLO text."""
    return re.findall(r"=\s*(\w+\[[\d,]*\])[^=\n]*\ball-gather\(", hlo)


@pytest.mark.parametrize("shape", [(4, 2), (1, 8)])
def test_no_full_head_or_logits_on_one_device(shape):
    emb, centers, labels, margins = problem()
    mesh = mesh_lib.make_mesh(*shape)
    hlo = _sharded(mesh).lower(emb, centers, labels, margins).compile().as_text()
    gathered = _gathered_shapes(hlo)
    full_head = f"f32[{C},{K},{D}]"
    full_logits = [f"f32[{N},{C}]", f"f32[{N},{C},{K}]"]
    assert full_head not in gathered, gathered
    assert not any(s in gathered for s in full_logits), gathered


def test_head_memory_per_device_falls_with_model_axis():
    _, centers, *_ = problem()
    per_device = {}
    for m in (1, 2, 4, 8):
        mesh = mesh_lib.make_mesh(-1, m)
        sh = mesh_lib.tree_shardings({"head": {"centers": centers}}, mesh)["head"]["centers"]
        arr = jax.device_put(centers, sh)
        per_device[m] = max(s.data.nbytes for s in arr.addressable_shards)
    full = C * K * D * 4
    assert per_device == {1: full, 2: full // 2, 4: full // 4, 8: full // 8}


def test_padded_head_gives_the_unpadded_loss_on_a_model_sharded_mesh():
    """GLDv2's 203,094 classes do not split over 8 devices: the head is padded
    (models.landmark.padded_num_classes) and the padding masked out of the
    softmax. Loss and gradients equal the unpadded head's; padding gets none."""
    from gld_jax.models.landmark import padded_num_classes

    emb, centers, labels, margins = problem()
    valid = 60  # not divisible by 8
    labels = labels % valid
    rng = np.random.default_rng(1)
    rows = padded_num_classes(valid)
    assert rows % 8 == 0 and rows > valid
    padded = np.concatenate([centers[:valid], rng.normal(size=(rows - valid, K, D))]).astype(
        np.float32
    )
    padded_margins = np.concatenate([margins[:valid], np.full(rows - valid, 0.3, np.float32)])

    ref_loss, (ref_ge, ref_gc) = jax.jit(loss_and_grads)(
        emb, centers[:valid], labels, margins[:valid]
    )

    def paddedloss_and_grads(e, c, lab, m):
        def f(e, c):
            return jnp.mean(sub_center_arcface_loss(e, c, lab, m, 30.0, num_valid_classes=valid))

        return jax.value_and_grad(f, argnums=(0, 1))(e, c)

    mesh = mesh_lib.make_mesh(1, 8)
    data, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    head = NamedSharding(mesh, P("model", None, None))
    fn = jax.jit(
        paddedloss_and_grads,
        in_shardings=(data, head, data, rep),
        out_shardings=(rep, (data, head)),
    )
    loss, (ge, gc) = fn(emb, padded, labels, padded_margins)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(ge, ref_ge, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gc[:valid], ref_gc, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(gc[valid:]) == 0)
