"""The trainer: a sharded step equals the unsharded one, and stop/resume is exact
in step count and never repeats a stage."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gld_jax.config import base_config, stage
from gld_jax.losses import dynamic_margins
from gld_jax.models.landmark import LandmarkModel
from gld_jax.train import mesh as mesh_lib
from gld_jax.train.checkpoint import Checkpointer
from gld_jax.train.state import init_train_state, split_model
from gld_jax.train.step import make_train_step, state_shardings
from gld_jax.train.trainer import train

NUM_CLASSES = 16


def _one_step(mesh, batch, margins):
    from flax import nnx

    model = LandmarkModel(
        backbone="efficientnet_b0",
        num_classes=NUM_CLASSES,
        embedding_dim=32,
        rngs=nnx.Rngs(params=0, dropout=1),
    )
    model.train()
    graphdef, params, stats, rng_state = split_model(model)
    # SGD: the update is proportional to the gradient. (Adam's first step is
    # lr * sign(g), which turns float noise on near-zero gradients into flips.)
    tx = optax.sgd(0.1)
    state = init_train_state(params, stats, tx)
    shardings = state_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    step = make_train_step(
        graphdef=graphdef,
        rng_state=rng_state,
        tx=tx,
        scale=30.0,
        key=jax.random.key(0),
        mesh=mesh,
        state_sharding=shardings,
    )
    sh = mesh_lib.batch_sharding(mesh)
    gbatch = {k: jax.device_put(v, sh) for k, v in batch.items()}
    before = jax.device_get(state.params)
    new_state, metrics = step(state, gbatch, jax.device_put(margins, mesh_lib.replicated(mesh)))
    return before, jax.device_get(new_state), jax.device_get(metrics), new_state


def test_sharded_step_equals_single_device_step():
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, (8,), dtype=np.int32),
    }
    margins = jnp.asarray(dynamic_margins(np.arange(1, NUM_CLASSES + 1)), jnp.float32)
    single = mesh_lib.make_mesh(1, 1, devices=jax.devices()[:1])
    p0, s1, m1, _ = _one_step(single, batch, margins)
    sharded = mesh_lib.make_mesh(4, 2)  # batch over 4, classes over 2
    _, s8, m8, live = _one_step(sharded, batch, margins)

    # the batch really was split and the head really class-sharded
    assert live.params["head"]["centers"].sharding.spec == mesh_lib.P("model", None, None)
    assert len({s.device for s in live.params["head"]["centers"].addressable_shards}) == 8
    assert np.isfinite(m1["loss"])
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    # Same update for every parameter: float32 sums run in another order on 8
    # devices (and BN over a batch of 8 amplifies that), so compare each leaf's
    # update relative to its size; a wrong sharding gives errors of order 1
    # (updates here are ~0.1 * gradient, of norm ~0.1 to 1 per leaf).
    for name, before, a, b in zip(
        ["/".join(map(str, p)) for p, _ in jax.tree_util.tree_leaves_with_path(s1.params)],
        jax.tree.leaves(p0),
        jax.tree.leaves(s1.params),
        jax.tree.leaves(s8.params),
        strict=True,
    ):
        d1, d8 = np.asarray(a) - before, np.asarray(b) - before
        # 1e-5 absolute floor: leaves whose true gradient is ~0 (a bias right
        # before a BatchNorm) carry only float noise.
        assert np.linalg.norm(d8 - d1) <= 1e-3 * np.linalg.norm(d1) + 1e-5, name
    for a, b in zip(jax.tree.leaves(s1.batch_stats), jax.tree.leaves(s8.batch_stats), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def tiny_config(data_dir):
    c = base_config()
    c.data_dir = str(data_dir)
    c.synthetic.enabled = True
    c.synthetic.num_classes = 8
    c.synthetic.max_images = 20
    c.synthetic.num_test = 20
    c.synthetic.image_width, c.synthetic.image_height = 64, 48
    c.convert.num_shards = 2
    c.model.embedding_dim = 32
    c.loss.scale = 30.0
    c.stages = [
        stage(image_size=32, epochs=0.5, batch_size=8, learning_rate=1e-3),
        stage(image_size=40, epochs=0.3, batch_size=8, learning_rate=1e-3, label_set="clean"),
    ]
    c.log_every_steps = 1
    c.checkpoint_every_steps = 1000
    c.eval.validate = False
    return c


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from gld_jax.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("tiny")
    config = tiny_config(root / "data")
    tfrecord_dir = prepare_data(config, str(root))
    return config, tfrecord_dir, root


def test_stop_and_resume_keeps_step_count(tiny_run):
    config, tfrecord_dir, root = tiny_run
    mesh = mesh_lib.make_mesh(-1, 1)
    workdir = str(root / "run")
    first = train(config, workdir=workdir, tfrecord_dir=tfrecord_dir, mesh=mesh, stop_after_steps=2)
    total = first.plans[-1].last_step
    stage0 = first.plans[0].steps
    assert not first.complete and first.global_step == 2 and first.steps_run == 2
    assert Checkpointer(workdir + "/checkpoints").latest_step() == 2

    second = train(config, workdir=workdir, tfrecord_dir=tfrecord_dir, mesh=mesh)
    assert second.complete
    assert second.steps_run == total - 2  # nothing repeated, nothing skipped
    assert Checkpointer(workdir + "/checkpoints").latest_step() == total
    # the stage-0 checkpoint exists as a boundary: the run crossed it once
    assert total > stage0 >= 2

    third = train(config, workdir=workdir, tfrecord_dir=tfrecord_dir, mesh=mesh)
    assert third.complete and third.steps_run == 0  # a finished run is not redone
    assert third.model.head.centers.value.shape[0] == second.plans[-1].num_classes
