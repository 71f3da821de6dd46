"""The optimizer's weight decay and the learning rate the trainer logs, checked
against what optax actually applies."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gld_jax.train.optim import applied_learning_rate, learning_rate_schedule, make_optimizer


def _config(name, weight_decay=0.0, momentum=0.0):
    return ml_collections.ConfigDict(
        dict(name=name, weight_decay=weight_decay, momentum=momentum, grad_clip_norm=0.0)
    )


def test_logged_learning_rate_is_the_one_each_update_used():
    schedule = learning_rate_schedule(0.1, total_steps=10, warmup_steps=4)
    tx = make_optimizer(_config("sgd"), schedule)
    params = {"w": jnp.zeros((2, 2))}
    state = tx.init(params)
    for step_done in range(1, 11):
        grads = {"w": jnp.ones((2, 2))}  # plain SGD: update = -lr * 1
        updates, state = tx.update(grads, state, params)
        used = -float(updates["w"][0, 0])
        assert applied_learning_rate(schedule, step_done) == pytest.approx(used, abs=1e-7)
    # the warmup starts from 0: the first update does not move the weights
    assert applied_learning_rate(schedule, 1) == 0.0


def test_sgd_weight_decay_goes_through_the_momentum_adamw_is_decoupled():
    lr, wd, m = 0.1, 0.01, 0.9
    params = {"w": jnp.full((2, 2), 3.0)}
    zero = {"w": jnp.zeros((2, 2))}
    sgd = make_optimizer(_config("sgd", wd, m), optax.constant_schedule(lr))
    updates, _ = sgd.update(zero, sgd.init(params), params)
    # decay added to the gradient, then Nesterov momentum: -lr * (1 + m) * wd * w
    np.testing.assert_allclose(updates["w"], -lr * (1 + m) * wd * 3.0, rtol=1e-6)
    adamw = make_optimizer(_config("adamw", wd), optax.constant_schedule(lr))
    updates, _ = adamw.update(zero, adamw.init(params), params)
    # decoupled: -lr * wd * w, whatever the (zero) gradient's Adam step
    np.testing.assert_allclose(updates["w"], -lr * wd * 3.0, rtol=1e-6)
