"""Training augmentations as pure TensorFlow functions of (image, seed).

Every random choice uses a stateless op with an explicit seed (int [2]), so a pipeline
that derives the seed from (run seed, process, element index) is reproducible.

The recipe (3rd place GLR 2020, albumentations): HorizontalFlip(p=0.5),
ShiftScaleRotate(shift_limit=0.2, scale_limit=0.2, rotate_limit=10, border_mode=0, p=0.7),
Resize, Cutout(one hole up to 0.4 * size per side, fill 0, p=0.5). We add an optional
random-resized-crop before the resize (it is done while decoding, so it is nearly free).
Images stay uint8 throughout; the model normalises.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the training augmentations.

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


def _uniform(seed: tf.Tensor, minval: float = 0.0, maxval: float = 1.0,
             shape: tuple[int, ...] = ()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Rounds and clips a float image to uint8."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def resize_square(image: tf.Tensor, size: int) -> tf.Tensor:
    """Plain (no crop) bilinear, antialiased resize of uint8 [H, W, 3] to uint8 [size, size, 3]."""
    resized = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return to_uint8(resized)


def random_crop_window(seed: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                       area: tuple[float, float], aspect: tuple[float, float]) -> tf.Tensor:
    """Random crop window int32 [4] = (y, x, h, w) in pixels of an image of height x width."""
    image_size = tf.stack([tf.cast(height, tf.int32), tf.cast(width, tf.int32), 3])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_size, bounding_boxes=tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
        aspect_ratio_range=aspect, area_range=area, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def decode_with_random_crop(encoded: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                            seed: tf.Tensor, prob: float, area: tuple[float, float],
                            aspect: tuple[float, float]) -> tf.Tensor:
    """Decodes JPEG bytes to uint8 [h, w, 3], with probability `prob` only a random crop.

    height/width are the stored JPEG's (from the record), so the crop window is chosen
    before decoding and only the window is decoded.
    """
    s_coin, s_window = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    window = random_crop_window(s_window, height, width, area, aspect)
    return tf.cond(
        _uniform(s_coin) < prob,
        lambda: tf.io.decode_and_crop_jpeg(encoded, window, channels=3),
        lambda: tf.io.decode_jpeg(encoded, channels=3))


def random_flip(image: tf.Tensor, seed: tf.Tensor, prob: float = 0.5) -> tf.Tensor:
    """Flips [H, W, C] left-right with probability `prob`."""
    return tf.cond(_uniform(seed) < prob, lambda: tf.reverse(image, axis=[1]),
                   lambda: image)


def affine_transform(image: tf.Tensor, angle_deg: tf.Tensor, scale: tf.Tensor,
                     shift: tf.Tensor, fill_value: float = 0.0) -> tf.Tensor:
    """Rotates (counter-clockwise as displayed), scales and shifts [H, W, C] about its centre.

    Args:
      image: [H, W, C] uint8 or float.
      angle_deg: scalar rotation in degrees.
      scale: scalar zoom factor (> 1 magnifies).
      shift: float [2] = (dx, dy) as fractions of (W, H); positive moves content right/down.
      fill_value: value of pixels that come from outside the image.

    Returns:
      Same shape and dtype as `image`, bilinear interpolation.
    """
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    theta = tf.cast(angle_deg, tf.float32) * (math.pi / 180.0)
    inv_s = 1.0 / tf.cast(scale, tf.float32)
    cos, sin = tf.cos(theta) * inv_s, tf.sin(theta) * inv_s
    # Output pixel p maps to input c + A (p - c - t), A = R(theta)^-1 / s in (x right,
    # y down) coordinates, where a visual counter-clockwise turn is [[cos, sin], [-sin, cos]].
    a00, a01, a10, a11 = cos, -sin, sin, cos
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    tx, ty = cx + tf.cast(shift[0], tf.float32) * w, cy + tf.cast(shift[1], tf.float32) * h
    transform = tf.stack([a00, a01, cx - a00 * tx - a01 * ty,
                          a10, a11, cy - a10 * tx - a11 * ty, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=shape[:2],
        fill_value=fill_value, interpolation="BILINEAR", fill_mode="CONSTANT")
    return out[0]


def random_shift_scale_rotate(image: tf.Tensor, seed: tf.Tensor, prob: float,
                              shift_limit: float, scale_limit: float,
                              rotate_limit: float) -> tf.Tensor:
    """With probability `prob`, a random affine_transform within the given limits."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    angle = _uniform(seeds[1], -rotate_limit, rotate_limit)
    scale = _uniform(seeds[2], 1.0 - scale_limit, 1.0 + scale_limit)
    shift = _uniform(seeds[3], -shift_limit, shift_limit, shape=(2,))
    return tf.cond(_uniform(seeds[0]) < prob,
                   lambda: affine_transform(image, angle, scale, shift),
                   lambda: image)


def random_cutout(image: tf.Tensor, seed: tf.Tensor, prob: float, max_frac: float,
                  fill_value: int = 0) -> tf.Tensor:
    """With probability `prob`, fills one random rectangle of [H, W, C] with `fill_value`.

    The rectangle's sides are uniform in [1, max_frac * side]; its centre is anywhere in
    the image and it is clipped at the borders (as albumentations' Cutout).
    """
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(image)
    hw = tf.cast(shape[:2], tf.float32)
    u = _uniform(seeds[1], shape=(4,))
    size = tf.maximum(1.0, tf.floor(u[:2] * max_frac * hw + 1.0))
    size = tf.minimum(size, tf.maximum(1.0, tf.floor(max_frac * hw)))
    centre = tf.floor(u[2:] * hw)
    lo = tf.cast(tf.maximum(0.0, centre - tf.floor(size / 2)), tf.int32)
    hi = tf.cast(tf.minimum(hw, centre - tf.floor(size / 2) + size), tf.int32)
    rows = tf.range(shape[0])[:, None]
    cols = tf.range(shape[1])[None, :]
    inside = (rows >= lo[0]) & (rows < hi[0]) & (cols >= lo[1]) & (cols < hi[1])
    apply = _uniform(seeds[0]) < prob
    mask = tf.logical_and(inside, apply)[:, :, None]
    return tf.where(mask, tf.cast(fill_value, image.dtype), image)


def augment_train_image(encoded: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                        seed: tf.Tensor, image_size: int,
                        config: AugmentConfig = AugmentConfig()) -> tf.Tensor:
    """Decode + full training augmentation of one JPEG to uint8 [image_size, image_size, 3].

    Order (as the recipe): [random crop] -> resize -> flip -> shift-scale-rotate -> cutout.
    The geometric ops run on the resized square image, which keeps them cheap.
    """
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    image = decode_with_random_crop(encoded, height, width, seeds[0], config.crop_prob,
                                    config.crop_area, config.crop_aspect)
    image = resize_square(image, image_size)
    image = random_flip(image, seeds[1], config.flip_prob)
    image = random_shift_scale_rotate(image, seeds[2], config.ssr_prob, config.shift_limit,
                                      config.scale_limit, config.rotate_limit)
    image = random_cutout(image, seeds[3], config.cutout_prob, config.cutout_max_frac)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def decode_eval_image(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode one JPEG and resize it (no crop) to uint8 [image_size, image_size, 3]."""
    image = resize_square(tf.io.decode_jpeg(encoded, channels=3), image_size)
    return tf.ensure_shape(image, [image_size, image_size, 3])
