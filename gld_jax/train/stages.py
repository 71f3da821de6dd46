"""Progressive stages: how many steps each takes and where a global step falls.

Pure functions of the config and the dataset counts, so a resumed run derives
its position from the checkpoint's global step alone.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class StagePlan:
    index: int
    image_size: int
    batch_size: int  # global
    learning_rate: float
    label_set: str
    new_head: bool
    num_classes: int
    num_train: int  # training images of the stage (its label set, training folds)
    steps: int
    warmup_steps: int
    first_step: int  # global step at the start of the stage

    @property
    def last_step(self) -> int:
        return self.first_step + self.steps


def plan_stages(
    stages, *, num_classes: dict[str, int], num_train: dict[str, int]
) -> list[StagePlan]:
    """One StagePlan per stage config.

    Args:
      stages: sequence of stage ConfigDicts (see gld_jax.config.stage).
      num_classes: classes per label set, e.g. {"full": 203094, "clean": 81313}.
      num_train: training images per label set (held-out fold excluded).
    """
    plans, first = [], 0
    for i, s in enumerate(stages):
        n = num_train[s.label_set]
        if n < s.batch_size:
            raise ValueError(
                f"stages[{i}]: {n} training images are fewer than one batch of {s.batch_size}"
            )
        steps = max(1, math.ceil(s.epochs * n / s.batch_size))
        warmup = round(s.warmup_epochs * n / s.batch_size)
        plans.append(
            StagePlan(
                index=i,
                image_size=s.image_size,
                batch_size=s.batch_size,
                learning_rate=s.learning_rate,
                label_set=s.label_set,
                new_head=bool(s.new_head),
                num_classes=num_classes[s.label_set],
                num_train=n,
                steps=steps,
                warmup_steps=warmup,
                first_step=first,
            )
        )
        first += steps
    return plans


def locate(global_step: int, plans: list[StagePlan]) -> tuple[int, int]:
    """(stage index, steps done in that stage) for a checkpoint's global step.

    A step on a stage boundary belongs to the stage it completes, so the caller
    sees `steps done == plan.steps` and moves on to the next stage.
    """
    for p in plans:
        if p.first_step <= global_step <= p.last_step:
            return p.index, global_step - p.first_step
    raise ValueError(
        f"checkpoint step {global_step} is past the {plans[-1].last_step} steps this config plans"
    )
