"""Optimizer and learning-rate schedule of one stage."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """Linear warmup to `peak`, then cosine decay to 0 at `total_steps`."""
    total_steps = max(total_steps, 1)
    warmup_steps = min(max(warmup_steps, 0), total_steps - 1)
    if warmup_steps == 0:
        return optax.cosine_decay_schedule(peak, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, total_steps, 0.0)


def decay_mask(params):
    """Weight decay on matrices and kernels only: norms, biases and GeM's p are
    1-d or scalar and decaying them only hurts."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) > 1, params)


def applied_learning_rate(schedule: optax.Schedule, steps_done: int) -> float:
    """The learning rate of the update that completed step `steps_done` (1-based):
    optax evaluates the schedule at the count of updates before it, so that is
    schedule(steps_done - 1), not schedule(steps_done) (the next step's)."""
    return float(schedule(max(steps_done - 1, 0)))


def make_optimizer(optimizer_config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay) or SGD with Nesterov momentum, whose weight
    decay is added to the gradient before the momentum (L2, as PyTorch's SGD);
    optional global-norm clipping first. Decay skips 1-d and scalar leaves."""
    parts = []
    if optimizer_config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optimizer_config.grad_clip_norm))
    if optimizer_config.name == "adamw":
        parts.append(
            optax.adamw(schedule, weight_decay=optimizer_config.weight_decay, mask=decay_mask)
        )
    elif optimizer_config.name == "sgd":
        parts.append(optax.add_decayed_weights(optimizer_config.weight_decay, mask=decay_mask))
        parts.append(optax.sgd(schedule, momentum=optimizer_config.momentum, nesterov=True))
    else:
        raise ValueError(f"unknown optimizer {optimizer_config.name!r}")
    return optax.chain(*parts)
