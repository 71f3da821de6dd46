"""Sub-center ArcFace with class-size-dependent ("dynamic") margins.

The recipe of the 3rd-place GLR2020 solution (arXiv 2010.05350):

* a head of K sub-centers per class, weights ``[C, K, D]``; the cosine of an
  embedding to a class is the max over that class's sub-centers;
* ArcFace: the target logit ``cos(theta)`` becomes ``cos(theta + m_c)``, all
  logits are multiplied by a scale ``s`` (80 in the recipe);
* ``m_c`` grows as the class gets rarer: ``t_c = n_c ** -0.25`` mapped linearly
  onto ``[0.05, 0.50]``.

Everything here is a pure jax function; no TensorFlow.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "arcface_logits",
    "dynamic_margins",
    "sub_center_arcface_loss",
    "sub_center_cosine",
]

# F.normalize's eps: a zero vector maps to zero instead of NaN.
_NORM_EPS = 1e-12
# Floor of 1 - cos^2 under the square root. float32 resolves 1 - cos^2 near
# cos = 1 only to ~1.2e-7, so values below this are rounding noise; the floor
# keeps d(sin)/d(cos) = -cos/sin finite (<= ~3.2e3) when an embedding lies on
# its class center.
_SIN2_FLOOR = 1e-7


def dynamic_margins(
    class_counts: ArrayLike,
    *,
    margin_min: float = 0.05,
    margin_range: float = 0.45,
    power: float = -0.25,
) -> jax.Array:
    """Per-class ArcFace margins from training-set class sizes.

    ``m_c = margin_range * (t_c - min t) / (max t - min t) + margin_min`` with
    ``t_c = n_c ** power``. With the defaults (the 3rd-place recipe) margins span
    exactly ``[0.05, 0.50]``: the rarest class gets 0.50, the largest 0.05.

    Edge cases (the recipe's code never meets them, ours can):

    * Classes with count 0 (in the head but absent from this training split)
      are left out of the min/max, so the other classes get exactly the margins
      the recipe computes from the classes that are present, and get the
      largest margin ``margin_min + margin_range`` (rarer than the rarest). They
      never appear as a target, so their margin only matters for consistency.
    * If all present classes have the same count, the normalisation is 0/0 and
      has no limit (tiny count differences already span the full range); every
      class then gets the midpoint ``margin_min + margin_range / 2`` (0.275 with
      the defaults), a typical fixed ArcFace margin, rather than an extreme.

    Args:
      class_counts: ``[C]`` number of training images per class (>= 0).
      margin_min: smallest margin, radians.
      margin_range: largest minus smallest margin, radians.
      power: exponent applied to the counts; negative so rare classes get more.

    Returns:
      ``[C]`` float32 margins in radians.

    Raises:
      ValueError: counts are not 1-D, empty, negative, non-finite, or all zero.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D array, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("class_counts must be finite and >= 0")
    present = counts > 0
    if not np.any(present):
        raise ValueError("class_counts are all zero: no class has training images")
    if power >= 0:
        raise ValueError(f"power must be negative (rare classes get larger margins), got {power}")

    t = np.ones_like(counts)
    t[present] = counts[present] ** power
    t_min, t_max = t[present].min(), t[present].max()
    if t_max > t_min:
        margins = margin_range * (t - t_min) / (t_max - t_min) + margin_min
    else:
        margins = np.full_like(counts, margin_min + margin_range / 2)
    margins[~present] = margin_min + margin_range
    return jnp.asarray(margins, dtype=jnp.float32)


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    # bf16/f16 -> f32 (softmax over 10^5 classes at scale 80 needs it);
    # f64 stays f64 so the math can be checked to 1e-10 under jax.enable_x64.
    return jnp.promote_types(dtype, jnp.float32)


def sub_center_cosine(
    embeddings: ArrayLike,
    centers: ArrayLike,
    *,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """Cosine of each embedding to each class: max over the class's sub-centers.

    Both sides are L2-normalised (a zero vector gives cosine 0, not NaN).
    Normalising the centers is folded into the ``[N, C, K]`` dot products instead
    of materialising a normalised copy of the ``[C, K, D]`` head.

    Args:
      embeddings: ``[N, D]`` any float dtype.
      centers: ``[C, K, D]`` sub-center weights, class-major.
      precision: passed to the matmul (e.g. ``jax.lax.Precision.HIGHEST`` on TPU
        for full-f32 products; the default uses the backend's fast path).

    Returns:
      ``[N, C]`` cosines in float32 (float64 if an input is float64).
    """
    embeddings = jnp.asarray(embeddings)
    centers = jnp.asarray(centers)
    if embeddings.ndim != 2 or centers.ndim != 3 or embeddings.shape[1] != centers.shape[2]:
        raise ValueError(
            f"expected embeddings [N, D] and centers [C, K, D], got {embeddings.shape} "
            f"and {centers.shape}"
        )
    dtype = _compute_dtype(jnp.promote_types(embeddings.dtype, centers.dtype))
    e = embeddings.astype(dtype)
    w = centers.astype(dtype)
    e = e * jax.lax.rsqrt(jnp.maximum(jnp.sum(e * e, axis=-1, keepdims=True), _NORM_EPS**2))
    inv_w = jax.lax.rsqrt(jnp.maximum(jnp.sum(w * w, axis=-1), _NORM_EPS**2))  # [C, K]
    dots = jnp.einsum("nd,ckd->nck", e, w, precision=precision)
    return jnp.max(dots * inv_w[None], axis=-1)


def arcface_logits(
    cosine: ArrayLike,
    labels: ArrayLike,
    margins: ArrayLike,
    scale: float,
) -> jax.Array:
    """ArcFace logits: angular margin on the target class, then scale.

    For the target class ``y`` with ``c = cos(theta)`` and margin ``m = m_y``:

    * ``phi = cos(theta + m) = c cos m - sin(theta) sin m`` when
      ``c > cos(pi - m)``, i.e. ``theta + m < pi`` (still decreasing in theta);
    * otherwise ``phi = c - m sin m`` (the recipe's ``mm = sin(pi - m) * m``;
      insightface's ``easy_margin=False``), which keeps the logit monotone in
      theta past ``pi - m``. This is exactly the 3rd-place
      ``ArcFaceLossAdaptiveMargin``: ``th = cos(pi - m)``,
      ``phi = where(cos > th, phi, cos - mm)``.

    Non-target logits stay ``c``. Every logit is then multiplied by ``scale``.

    Args:
      cosine: ``[N, C]`` cosines (e.g. from :func:`sub_center_cosine`).
      labels: ``[N]`` int target classes; must lie in ``[0, C)`` (out-of-range
        labels are not detected under jit: mask padded examples by weight).
      margins: ``[C]`` per-class margins or a scalar, radians.
      scale: logit scale ``s`` (80 in the recipe).

    Returns:
      ``[N, C]`` scaled logits, float32 (float64 for float64 input).
    """
    cosine = jnp.asarray(cosine)
    cosine = cosine.astype(_compute_dtype(cosine.dtype))
    labels = jnp.asarray(labels).astype(jnp.int32)
    margins = jnp.asarray(margins, dtype=cosine.dtype)
    num_classes = cosine.shape[-1]
    if margins.ndim == 1:
        m = margins[labels]
    elif margins.ndim == 0:
        m = jnp.broadcast_to(margins, labels.shape)
    else:
        raise ValueError(f"margins must be a scalar or [C], got shape {margins.shape}")

    # A one-hot mask (not a scatter) keeps this elementwise, so it shards over
    # the class axis like the head does.
    is_target = labels[:, None] == jax.lax.broadcasted_iota(jnp.int32, (1, num_classes), 1)
    cos_t = jnp.sum(jnp.where(is_target, cosine, 0), axis=-1)  # [N]
    sin_t = jnp.sqrt(jnp.maximum(1 - cos_t * cos_t, _SIN2_FLOOR))
    phi = cos_t * jnp.cos(m) - sin_t * jnp.sin(m)
    phi = jnp.where(cos_t > jnp.cos(math.pi - m), phi, cos_t - jnp.sin(math.pi - m) * m)
    return jnp.where(is_target, phi[:, None], cosine) * scale


def mask_padded_classes(
    scores: jax.Array, num_valid_classes: int | None, first_class: jax.Array | int = 0
) -> jax.Array:
    """``[N, C]`` scores with the padded classes (index ``>= num_valid_classes``)
    set to -inf, so they take no softmax mass and no argmax. ``first_class`` is
    the class index of column 0 (a shard of the class axis; may be traced)."""
    if num_valid_classes is None or (
        isinstance(first_class, int) and first_class + scores.shape[-1] <= num_valid_classes
    ):
        return scores
    column = jax.lax.broadcasted_iota(jnp.int32, (1, scores.shape[-1]), 1)
    return jnp.where(first_class + column < num_valid_classes, scores, -jnp.inf)


def sub_center_arcface_loss(
    embeddings: ArrayLike,
    centers: ArrayLike,
    labels: ArrayLike,
    margins: ArrayLike,
    scale: float,
    *,
    precision: jax.lax.PrecisionLike = None,
    num_valid_classes: int | None = None,
) -> jax.Array:
    """Per-example Sub-center ArcFace loss (softmax cross-entropy).

    ``loss_n = logsumexp_c(z_nc) - z_{n, y_n}`` with
    ``z = arcface_logits(sub_center_cosine(embeddings, centers), labels, margins, scale)``.

    Args:
      embeddings: ``[N, D]`` embeddings, any float dtype.
      centers: ``[C, K, D]`` sub-center weights.
      labels: ``[N]`` int classes in ``[0, C)``. Labels must be valid: padded
        examples get a valid dummy label and are masked by the caller's weights.
      margins: ``[C]`` margins (see :func:`dynamic_margins`) or a scalar, radians.
      scale: logit scale.
      precision: matmul precision for :func:`sub_center_cosine`.
      num_valid_classes: classes ``>=`` this are padding (a head padded so its
        class axis splits evenly over the mesh) and are left out of the softmax.

    Returns:
      ``[N]`` losses in nats, float32 (float64 for float64 input).
    """
    cosine = sub_center_cosine(embeddings, centers, precision=precision)
    logits = mask_padded_classes(arcface_logits(cosine, labels, margins, scale), num_valid_classes)
    labels = jnp.asarray(labels).astype(jnp.int32)
    is_target = labels[:, None] == jax.lax.broadcasted_iota(jnp.int32, (1, logits.shape[-1]), 1)
    target_logit = jnp.sum(jnp.where(is_target, logits, 0), axis=-1)
    return jax.nn.logsumexp(logits, axis=-1) - target_logit
