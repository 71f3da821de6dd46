"""The training augmentations' probabilities and ranges, shared by both places
they can run: the host's tf.data pipeline (gld_jax.data.augment) and the jitted
train step (gld_jax.data.device_augment). No TensorFlow or JAX here."""

from __future__ import annotations

import dataclasses

from gld_jax.config.defaults import AUGMENT_ON


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the training augmentations.

    The recipe (3rd place GLR 2020, albumentations): HorizontalFlip(p=0.5),
    ShiftScaleRotate(shift_limit=0.2, scale_limit=0.2, rotate_limit=10,
    border_mode=0, p=0.7), Cutout(one hole up to 0.4 of the side, fill 0,
    p=0.5); ours adds an optional random crop, done while decoding.

    Attributes:
      flip_prob: probability of a horizontal flip.
      crop_prob: probability of a random crop (area/aspect ranges below) before resizing.
      crop_area: range of the crop's area as a fraction of the image.
      crop_aspect: range of the crop's width/height ratio.
      ssr_prob: probability of shift-scale-rotate.
      shift_limit: max shift as a fraction of the side (each axis, uniform +-).
      scale_limit: scale drawn uniformly in [1 - limit, 1 + limit].
      rotate_limit: max rotation in degrees (uniform +-).
      cutout_prob: probability of one zero-filled rectangle.
      cutout_max_frac: max side of that rectangle as a fraction of the image side.
    """

    flip_prob: float = 0.5
    crop_prob: float = 0.25
    crop_area: tuple[float, float] = (0.6, 1.0)
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    ssr_prob: float = 0.7
    shift_limit: float = 0.2
    scale_limit: float = 0.2
    rotate_limit: float = 10.0
    cutout_prob: float = 0.5
    cutout_max_frac: float = 0.4


def resolve_augment_on(augment_on: str, platform: str) -> str:
    """The placement, "host" or "device", of a config's `input.augment_on` on
    `platform` ("cpu", "gpu", "tpu"). "auto" moves the augmentations into the
    train step on a GPU only. On a CPU the same cores would do the work either
    way. On a TPU the warp's gathers are dear: XLA:TPU compiles effb3's stage 0
    on a v3-32 to 150 GB accessed per step with them against 10 GB without (a
    333 ms against 23 ms roofline, scripts/bench/device_augment_tpu.py), so a
    TPU run asks for "device" explicitly, after checking `--dry_run --compile`.
    """
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"input.augment_on: {augment_on!r}; expected one of {AUGMENT_ON}")
    if augment_on != "auto":
        return augment_on
    return "device" if platform == "gpu" else "host"


def augments_on_device(config, platform: str) -> bool:
    """Whether a run of `config` on `platform` flips, warps and cuts out inside the
    train step (`config.augment` on and `input.augment_on` resolving to "device");
    the host pipeline then leaves them out."""
    return (
        bool(config.augment) and resolve_augment_on(config.input.augment_on, platform) == "device"
    )
