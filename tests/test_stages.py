"""Stage planning and locating a checkpoint step (hand-computed)."""

import pytest

from gld_jax.config import stage
from gld_jax.train.stages import locate, plan_stages

STAGES = [
    stage(image_size=64, epochs=2, batch_size=32, learning_rate=1e-3, warmup_epochs=0.5),
    stage(image_size=96, epochs=1.5, batch_size=16, learning_rate=1e-3, label_set="clean"),
]


def test_plan_counts_steps_per_stage():
    plans = plan_stages(
        STAGES, num_classes={"full": 10, "clean": 7}, num_train={"full": 100, "clean": 50}
    )
    # stage 0: ceil(2 * 100 / 32) = ceil(6.25) = 7 steps; warmup round(0.5*100/32)=2
    # stage 1: ceil(1.5 * 50 / 16) = ceil(4.69) = 5 steps
    assert [p.steps for p in plans] == [7, 5]
    assert [p.first_step for p in plans] == [0, 7]
    assert plans[0].warmup_steps == 2
    assert plans[1].num_classes == 7 and plans[1].last_step == 12


def test_locate():
    plans = plan_stages(
        STAGES, num_classes={"full": 10, "clean": 7}, num_train={"full": 100, "clean": 50}
    )
    assert locate(0, plans) == (0, 0)
    assert locate(3, plans) == (0, 3)
    assert locate(7, plans) == (0, 7)  # boundary: stage 0 complete
    assert locate(8, plans) == (1, 1)
    assert locate(12, plans) == (1, 5)
    with pytest.raises(ValueError):
        locate(13, plans)


def test_too_few_images_for_a_batch():
    with pytest.raises(ValueError, match="fewer than one batch"):
        plan_stages(
            STAGES, num_classes={"full": 10, "clean": 7}, num_train={"full": 20, "clean": 50}
        )
