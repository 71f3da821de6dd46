"""The trainer: a sharded step equals the unsharded one, and stop/resume is exact
in step count and never repeats a stage."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny import tiny_config

from gld_jax.data.batches import host_batches
from gld_jax.losses import dynamic_margins, sub_center_arcface_loss
from gld_jax.models.landmark import LandmarkModel
from gld_jax.train import mesh as mesh_lib
from gld_jax.train.checkpoint import Checkpointer
from gld_jax.train.stages import plan_stages
from gld_jax.train.state import init_train_state, split_model
from gld_jax.train.step import make_train_step, state_shardings
from gld_jax.train.trainer import stage_label_info, train

NUM_CLASSES = 16


def _one_step(mesh, batch, margins, fsdp=False):
    from flax import nnx

    model = LandmarkModel(
        backbone="efficientnet_b0_shallow",
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
    shardings = state_shardings(state, mesh, fsdp=fsdp)
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
    margins = jax.device_put(margins, mesh_lib.replicated(mesh))
    cost = step.lower(state, gbatch, margins).compile().cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost)["flops"])  # per device
    new_state, metrics = step(state, gbatch, margins)
    return before, jax.device_get(new_state), jax.device_get(metrics), new_state, flops


def _batch_and_margins(seed):
    """A batch of 8 random 32 px images with labels, and margins for NUM_CLASSES."""
    rng = np.random.default_rng(seed)
    batch = {
        "image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, (8,), dtype=np.int32),
    }
    return batch, jnp.asarray(dynamic_margins(np.arange(1, NUM_CLASSES + 1)), jnp.float32)


def test_sharded_step_equals_single_device_step():
    batch, margins = _batch_and_margins(0)
    single = mesh_lib.make_mesh(1, 1, devices=jax.devices()[:1])
    p0, s1, m1, _, flops1 = _one_step(single, batch, margins)
    sharded = mesh_lib.make_mesh(4, 2)  # classes over 2, the batch over all 8
    _, s8, m8, live, flops8 = _one_step(sharded, batch, margins)

    # The backbone is data-parallel over both mesh axes: each device does about
    # 1/8 of the work (the replicated optimizer update adds a little).
    assert flops1 / flops8 > 5.5, (flops1, flops8)  # measured 6.5; data-axis-only split: 4.4

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


def test_fsdp_step_equals_single_device_step_and_splits_the_backbone():
    batch, margins = _batch_and_margins(1)
    single = mesh_lib.make_mesh(1, 1, devices=jax.devices()[:1])
    p0, s1, m1, _, _ = _one_step(single, batch, margins)
    _, s8, m8, live, _ = _one_step(mesh_lib.make_mesh(4, 2), batch, margins, fsdp=True)
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    # Every large backbone/neck leaf is split 4 ways over 'data' (the head keeps
    # its class split over 'model'); small leaves (BN scales) stay whole.
    big = [a for a in jax.tree.leaves(live.params) if a.size >= mesh_lib.FSDP_MIN_SIZE]
    assert big and all(
        a.addressable_shards[0].data.size * 4 == a.size
        for a in big
        if a.sharding.spec != mesh_lib.P("model", None, None)
    )
    for before, a, b in zip(
        jax.tree.leaves(p0), jax.tree.leaves(s1.params), jax.tree.leaves(s8.params), strict=True
    ):
        d1, d8 = np.asarray(a) - before, np.asarray(b) - before
        assert np.linalg.norm(d8 - d1) <= 1e-3 * np.linalg.norm(d1) + 1e-5


def _train(config, *, tfrecord_dir, **kwargs):
    """trainer.train with the config's own host batch stream."""
    return train(
        config, tfrecord_dir=tfrecord_dir, batches=host_batches(config, tfrecord_dir), **kwargs
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from gld_jax.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("tiny")
    config = tiny_config(root / "data")
    # The flip, warp and cutout inside the step, the path GPU runs take: the
    # resume test below must hold with their draws too, and every test here
    # then shares the same compiled steps.
    config.input.augment_on = "device"
    tfrecord_dir = prepare_data(config, str(root))
    return config, tfrecord_dir, root


def _final_params(workdir):
    ckpt = Checkpointer(workdir + "/checkpoints")
    step = ckpt.latest_step()
    return step, ckpt.restore_arrays(step)["params"]


def test_interrupted_run_resumes_exactly_and_never_repeats_a_stage(tiny_run):
    """Stop inside stage 0, resume across the stage boundary (new head, new image
    size): the step count is exact, no stage runs twice, and the final parameters
    equal an uninterrupted run's. Exactly equal is expected (same programs, same
    data order, dropout keyed by step); 1e-6 allows for XLA reordering sums
    between differently shaped compilations. The flip, shift-scale-rotate and
    cutout run inside the step (input.augment_on=device, see tiny_run), so
    their draws must resume too; the host's crop still runs."""
    config, tfrecord_dir, root = tiny_run
    mesh = mesh_lib.make_mesh(-1, 1)
    straight = str(root / "straight")
    broken = str(root / "broken")
    _train(
        config,
        workdir=straight,
        tfrecord_dir=tfrecord_dir,
        mesh=mesh,
    )

    first = _train(
        config,
        workdir=broken,
        tfrecord_dir=tfrecord_dir,
        mesh=mesh,
        stop_after_steps=2,
    )
    total, stage0 = first.plans[-1].last_step, first.plans[0].steps
    assert total > stage0 > 2  # the resumed call crosses the stage boundary
    assert not first.complete and first.global_step == 2 and first.steps_run == 2
    assert Checkpointer(broken + "/checkpoints").latest_step() == 2
    second = _train(
        config,
        workdir=broken,
        tfrecord_dir=tfrecord_dir,
        mesh=mesh,
    )
    assert second.complete and second.steps_run == total - 2  # nothing repeated or skipped
    assert [h["step"] for h in second.history] == list(range(3, total + 1))

    s1, p1 = _final_params(straight)
    s2, p2 = _final_params(broken)
    assert s1 == s2 == total
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)

    third = _train(
        config,
        workdir=broken,
        tfrecord_dir=tfrecord_dir,
        mesh=mesh,
    )
    assert third.complete and third.steps_run == 0  # a finished run is not redone
    assert third.model.head.num_classes == second.plans[-1].num_classes


def test_stop_on_a_stage_boundary_does_not_start_the_next_stage(tiny_run):
    config, tfrecord_dir, root = tiny_run
    mesh = mesh_lib.make_mesh(-1, 1)
    workdir = str(root / "boundary")
    num_classes, num_train = stage_label_info(tfrecord_dir, config)
    stage0 = plan_stages(config.stages, num_classes=num_classes, num_train=num_train)[0].steps
    r = _train(
        config,
        workdir=workdir,
        tfrecord_dir=tfrecord_dir,
        mesh=mesh,
        stop_after_steps=stage0,
        validate_fn=lambda model, plan: {"head": 0.5 + plan.index},
    )
    assert not r.complete and r.global_step == stage0 and r.steps_run == stage0
    # stage 0 finished, so it was validated; stage 1 never started
    assert r.validation == [{"head": 0.5}] and r.validation_gap == [0.5]
    assert Checkpointer(workdir + "/checkpoints").latest_step() == stage0


def test_sigterm_saves_and_stops_with_preempted(tiny_run, monkeypatch):
    import os
    import signal

    from gld_jax.train import trainer as trainer_lib
    from gld_jax.train.preemption import TrainingPreempted

    config, tfrecord_dir, root = tiny_run
    mesh = mesh_lib.make_mesh(-1, 1)
    workdir = str(root / "preempted")
    real = trainer_lib._to_global
    calls = []

    def to_global_then_sigterm(batch, mesh):
        calls.append(1)
        if len(calls) == 2:  # SIGTERM arrives while step 2 runs
            os.kill(os.getpid(), signal.SIGTERM)
        return real(batch, mesh)

    monkeypatch.setattr(trainer_lib, "_to_global", to_global_then_sigterm)
    with pytest.raises(TrainingPreempted, match="step 2"):
        _train(
            config,
            workdir=workdir,
            tfrecord_dir=tfrecord_dir,
            mesh=mesh,
        )
    assert Checkpointer(workdir + "/checkpoints").latest_step() == 2
    # the handler is gone again: the default SIGTERM action is back
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    monkeypatch.setattr(trainer_lib, "_to_global", real)
    resumed = _train(
        config,
        workdir=workdir,
        tfrecord_dir=tfrecord_dir,
        mesh=mesh,
    )
    assert resumed.complete and resumed.steps_run == resumed.plans[-1].last_step - 2


def test_the_watchdog_hears_of_finished_steps_and_not_of_compiles(tiny_run, monkeypatch):
    """The step watchdog is paused before a stage's first step (it compiles) and
    hears of each step once it has finished: the first report comes as step 2
    is queued, after step 1's results were waited for."""
    from gld_jax.train import trainer as trainer_lib

    config, tfrecord_dir, root = tiny_run
    events = []

    class Recorder:
        def pause(self):
            events.append("pause")

        def step_done(self):
            events.append(("step", trainer_lib.progress._step))

        def close(self):
            events.append("close")

    monkeypatch.setattr(trainer_lib, "run_watchdog", lambda watchdog_s: Recorder())
    _train(
        config,
        workdir=str(root / "watched"),
        tfrecord_dir=tfrecord_dir,
        mesh=mesh_lib.make_mesh(-1, 1),
        stop_after_steps=3,
    )
    # the progress noted for the stop lines comes with each report
    assert events == ["pause", ("step", 1), ("step", 2), "pause", "close"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_run, monkeypatch):
    from gld_jax.train import trainer as trainer_lib
    from gld_jax.train.trainer import TrainingDiverged

    config, tfrecord_dir, root = tiny_run
    mesh = mesh_lib.make_mesh(-1, 1)
    workdir = str(root / "diverged")
    _train(
        config,
        workdir=workdir,
        tfrecord_dir=tfrecord_dir,
        mesh=mesh,
        stop_after_steps=1,
    )
    # NaN margins make the very next loss NaN
    monkeypatch.setattr(
        trainer_lib, "dynamic_margins", lambda counts, **kw: np.full(len(counts), np.nan)
    )
    with pytest.raises(TrainingDiverged, match="step 2"):
        _train(
            config,
            workdir=workdir,
            tfrecord_dir=tfrecord_dir,
            mesh=mesh,
        )
    assert Checkpointer(workdir + "/checkpoints").latest_step() == 1


def test_accumulated_step_equals_sequential_micro_steps_and_ema():
    """accumulate=2 averages the gradients of two micro-batches run one after the
    other (BN statistics threaded through), computed here as two separate plain
    steps; EMA with decay 0.5 is the midpoint of old and new parameters."""
    from flax import nnx

    from gld_jax.train.step import train_step_fn

    batch, _ = _batch_and_margins(1)
    margins = jnp.full((NUM_CLASSES,), 0.2, jnp.float32)
    model = LandmarkModel(
        backbone="efficientnet_b0_shallow",
        num_classes=NUM_CLASSES,
        embedding_dim=32,
        drop_path_rate=0.0,
        rngs=nnx.Rngs(params=0, dropout=1),
    )
    model.train()
    graphdef, params, stats, rng_state = split_model(model)
    tx = optax.sgd(1.0)  # update = -gradient
    common = dict(graphdef=graphdef, rng_state=rng_state, tx=tx, scale=30.0, key=jax.random.key(0))
    state = init_train_state(params, stats, tx, ema=True)
    step = jax.jit(lambda s, b: train_step_fn(s, b, margins, accumulate=1, **common))
    acc_step = jax.jit(
        lambda s, b: train_step_fn(s, b, margins, accumulate=2, ema_decay=0.5, **common)
    )

    # micro-batch i holds rows i, i+2, i+4, i+6 (spread over the data axis)
    micro = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]
    s0, m0 = step(state, micro[0])
    s1, m1 = step(state.replace(batch_stats=s0.batch_stats), micro[1])
    sa, ma = acc_step(state, batch)

    np.testing.assert_allclose(ma["loss"], (m0["loss"] + m1["loss"]) / 2, rtol=1e-5)
    leaves = list(
        zip(
            jax.tree.leaves(params),
            jax.tree.leaves(s0.params),
            jax.tree.leaves(s1.params),
            jax.tree.leaves(sa.params),
            strict=True,
        )
    )
    expected = [((a - p) + (b - p)) / 2 for p, a, b, _ in leaves]  # mean micro update
    total = np.sqrt(sum(np.sum(np.square(e)) for e in expected))
    for (p, _, _, c), e in zip(leaves, expected, strict=True):
        # relative to the update's size, with a floor of 1e-6 of the whole update
        # for leaves whose true gradient is ~0 (a bias right before a BatchNorm):
        # float32 sums in another order move updates by ~1e-5 relative, a wrong
        # micro-batch split by O(1)
        err = np.linalg.norm((c - p) - e)
        assert err <= 1e-3 * np.linalg.norm(e) + 1e-6 * total
    for x, y in zip(jax.tree.leaves(s1.batch_stats), jax.tree.leaves(sa.batch_stats), strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)
    for p, c, e in zip(
        jax.tree.leaves(params),
        jax.tree.leaves(sa.params),
        jax.tree.leaves(sa.ema_params),
        strict=True,
    ):
        np.testing.assert_allclose(e, 0.5 * p + 0.5 * c, rtol=1e-6, atol=1e-7)


def test_bfloat16_compute_keeps_float32_parameters_and_loss():
    from flax import nnx

    model = LandmarkModel(
        backbone="efficientnet_b0_shallow",
        num_classes=NUM_CLASSES,
        embedding_dim=32,
        dtype="bfloat16",
        rngs=nnx.Rngs(params=0, dropout=1),
    )
    model.eval()
    images = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    params = nnx.state(model, nnx.Param)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}

    emb = nnx.jit(lambda m, x: m(x))(model, images)
    assert emb.dtype == jnp.float32 and np.all(np.isfinite(emb))
    # the backbone's convolutions and matmuls really run in bfloat16
    hlo = jax.jit(lambda x: model(x)).lower(images).as_text()
    assert "bf16" in hlo
    # loss math stays float32 even on bfloat16 embeddings
    loss = sub_center_arcface_loss(
        emb.astype(jnp.bfloat16),
        model.head.centers[...],
        jnp.arange(4) % NUM_CLASSES,
        jnp.full((NUM_CLASSES,), 0.3),
        30.0,
    )
    assert loss.dtype == jnp.float32 and np.all(np.isfinite(loss))
