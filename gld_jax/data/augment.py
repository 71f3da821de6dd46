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

import math

import tensorflow as tf

from gld_jax.data.augment_config import AugmentConfig

RECIPE_AUGMENT = AugmentConfig()  # frozen: safe as a default argument


def _uniform(
    seed: tf.Tensor, minval: float = 0.0, maxval: float = 1.0, shape: tuple[int, ...] = ()
) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Rounds and clips a float image to uint8."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def resize_square(image: tf.Tensor, size: int) -> tf.Tensor:
    """Plain (no crop) bilinear, antialiased resize of uint8 [H, W, 3] to uint8 [size, size, 3]."""
    resized = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return to_uint8(resized)


def random_crop_window(
    seed: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    area: tuple[float, float],
    aspect: tuple[float, float],
) -> tf.Tensor:
    """Random crop window int32 [4] = (y, x, h, w) in pixels of an image of height x width."""
    image_size = tf.stack([tf.cast(height, tf.int32), tf.cast(width, tf.int32), 3])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_size,
        bounding_boxes=tf.zeros([1, 0, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=aspect,
        area_range=area,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


_DCT_RATIOS = (1, 2, 4, 8)  # the scales libjpeg decodes to directly


def dct_ratio(height: tf.Tensor, width: tf.Tensor, size: int) -> tf.Tensor:
    """Largest JPEG DCT scale r in {1, 2, 4, 8} with min(height, width) // r >= size.

    Decoding at 1/r then resizing to size x size never upsamples beyond what a full
    decode would, and costs about 1/r^2 of the IDCT work. int32 scalar.
    """
    short = tf.minimum(tf.cast(height, tf.int32), tf.cast(width, tf.int32))
    ratio = tf.constant(1, tf.int32)
    for r in _DCT_RATIOS[1:]:
        ratio = tf.where(short // r >= size, r, ratio)
    return ratio


def decode_window(
    encoded: tf.Tensor, window: tf.Tensor, size: int, dct_scaling: bool = True
) -> tf.Tensor:
    """Decodes the crop window (y, x, h, w) in pixels of a JPEG to uint8 [h', w', 3].

    With dct_scaling the window is decoded at 1/r of its size (r = dct_ratio(h, w, size)),
    so a 1024 px source for a 256 px stage pays for a 256 px decode; without it, h' = h and
    w' = w. libjpeg takes the window in the scaled image's pixels, hence window // r.
    """
    window = tf.cast(window, tf.int32)
    if not dct_scaling:
        return tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
    ratio = dct_ratio(window[2], window[3], size)

    def branch(r: int):
        def decode() -> tf.Tensor:
            scaled = tf.stack(
                [
                    window[0] // r,
                    window[1] // r,
                    tf.maximum(1, window[2] // r),
                    tf.maximum(1, window[3] // r),
                ]
            )
            return tf.raw_ops.DecodeAndCropJpeg(
                contents=encoded, crop_window=scaled, channels=3, ratio=r
            )

        return decode

    index = tf.cast(tf.round(tf.math.log(tf.cast(ratio, tf.float32)) / math.log(2.0)), tf.int32)
    return tf.switch_case(index, [branch(r) for r in _DCT_RATIOS])


def decode_with_random_crop(
    encoded: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    seed: tf.Tensor,
    prob: float,
    area: tuple[float, float],
    aspect: tuple[float, float],
    size: int = 0,
    dct_scaling: bool = False,
) -> tf.Tensor:
    """Decodes JPEG bytes to uint8 [h, w, 3], with probability `prob` only a random crop.

    height/width are the stored JPEG's (from the record), so the crop window is chosen
    before decoding and only the window is decoded; with dct_scaling (and size, the
    side it will be resized to) at a reduced scale (decode_window).
    """
    s_coin, s_window = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    crop = random_crop_window(s_window, height, width, area, aspect)
    full = tf.stack([0, 0, tf.cast(height, tf.int32), tf.cast(width, tf.int32)])
    window = tf.where(_uniform(s_coin) < prob, crop, full)
    return decode_window(encoded, window, size, dct_scaling=dct_scaling and size > 0)


def random_flip(image: tf.Tensor, seed: tf.Tensor, prob: float = 0.5) -> tf.Tensor:
    """Flips [H, W, C] left-right with probability `prob`."""
    return tf.cond(_uniform(seed) < prob, lambda: tf.reverse(image, axis=[1]), lambda: image)


def affine_transform(
    image: tf.Tensor,
    angle_deg: tf.Tensor,
    scale: tf.Tensor,
    shift: tf.Tensor,
    fill_value: float = 0.0,
) -> tf.Tensor:
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
    transform = tf.stack(
        [a00, a01, cx - a00 * tx - a01 * ty, a10, a11, cy - a10 * tx - a11 * ty, 0.0, 0.0]
    )
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform[None],
        output_shape=shape[:2],
        fill_value=fill_value,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return out[0]


def random_shift_scale_rotate(
    image: tf.Tensor,
    seed: tf.Tensor,
    prob: float,
    shift_limit: float,
    scale_limit: float,
    rotate_limit: float,
) -> tf.Tensor:
    """With probability `prob`, a random affine_transform within the given limits."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    angle = _uniform(seeds[1], -rotate_limit, rotate_limit)
    scale = _uniform(seeds[2], 1.0 - scale_limit, 1.0 + scale_limit)
    shift = _uniform(seeds[3], -shift_limit, shift_limit, shape=(2,))
    return tf.cond(
        _uniform(seeds[0]) < prob,
        lambda: affine_transform(image, angle, scale, shift),
        lambda: image,
    )


def random_cutout(
    image: tf.Tensor, seed: tf.Tensor, prob: float, max_frac: float, fill_value: int = 0
) -> tf.Tensor:
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


def augment_train_image(
    encoded: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    seed: tf.Tensor,
    image_size: int,
    config: AugmentConfig = RECIPE_AUGMENT,
    dct_scaling: bool = True,
    geometric: bool = True,
) -> tf.Tensor:
    """Decode + training augmentation of one JPEG to uint8 [image_size, image_size, 3].

    Order (as the recipe): [random crop] -> resize -> flip -> shift-scale-rotate -> cutout.
    The geometric ops run on the resized square image, which keeps them cheap; the decode
    itself is DCT-scaled when the (cropped) source is at least 2x image_size. With
    `geometric=False` the image stops after the resize: the train step applies the
    flip, shift-scale-rotate and cutout on the accelerator (gld_jax.data.device_augment).
    """
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    image = decode_with_random_crop(
        encoded,
        height,
        width,
        seeds[0],
        config.crop_prob,
        config.crop_area,
        config.crop_aspect,
        size=image_size,
        dct_scaling=dct_scaling,
    )
    image = resize_square(image, image_size)
    if not geometric:
        return tf.ensure_shape(image, [image_size, image_size, 3])
    image = random_flip(image, seeds[1], config.flip_prob)
    image = random_shift_scale_rotate(
        image,
        seeds[2],
        config.ssr_prob,
        config.shift_limit,
        config.scale_limit,
        config.rotate_limit,
    )
    image = random_cutout(image, seeds[3], config.cutout_prob, config.cutout_max_frac)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def decode_eval_image(encoded: tf.Tensor, image_size: int, dct_scaling: bool = True) -> tf.Tensor:
    """Decode one JPEG and resize it (no crop) to uint8 [image_size, image_size, 3].

    With dct_scaling a source at least 2x image_size is decoded at 1/2, 1/4 or 1/8 scale
    (its size comes from the JPEG header, read without decoding).
    """
    if dct_scaling:
        shape = tf.io.extract_jpeg_shape(encoded, output_type=tf.int32)
        window = tf.stack([0, 0, shape[0], shape[1]])
        decoded = decode_window(encoded, window, image_size)
    else:
        decoded = tf.io.decode_jpeg(encoded, channels=3)
    image = resize_square(decoded, image_size)
    return tf.ensure_shape(image, [image_size, image_size, 3])
