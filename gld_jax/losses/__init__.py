"""Losses: Sub-center ArcFace with dynamic margins (pure jax, no TensorFlow)."""

from gld_jax.losses.arcface import (
    arcface_logits,
    dynamic_margins,
    mask_padded_classes,
    sub_center_arcface_loss,
    sub_center_cosine,
)

__all__ = [
    "arcface_logits",
    "dynamic_margins",
    "mask_padded_classes",
    "sub_center_arcface_loss",
    "sub_center_cosine",
]
