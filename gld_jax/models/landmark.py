"""The landmark model: backbone -> GeM -> 512-d neck, plus a Sub-center head.

The head only holds the class centres; the loss that uses them is a pure
function in `gld_jax.losses`. Stages that change the label set swap in a new head
(`model.head = SubCenterHead(...)`) and keep the embedder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gld_jax.models.layers import ConvImpl
from gld_jax.models.neck import EmbeddingNeck
from gld_jax.models.pooling import GeM
from gld_jax.models.registry import create_backbone

# ImageNet statistics in 0..255 units: the backbones are the ImageNet ones.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# The head's class axis is padded to a multiple of this, so it splits evenly over
# any power-of-two 'model' axis up to 512 (203,094 GLDv2 classes are not even
# divisible by 4) and fills TPU lanes; padded classes are masked out of the loss.
CLASS_PAD_MULTIPLE = 512


def padded_num_classes(num_classes: int, multiple: int = CLASS_PAD_MULTIPLE) -> int:
    return -(-num_classes // multiple) * multiple


class SubCenterHead(nnx.Module):
    """Class centres `[padded classes, sub_centers, dim]` (class-major, so the class
    dimension can be sharded over the mesh's 'model' axis); rows from
    `num_classes` on are padding."""

    def __init__(self, num_classes: int, sub_centers: int, dim: int, *, rngs: nnx.Rngs):
        bound = 1.0 / dim**0.5  # uniform(-1/sqrt(D), 1/sqrt(D)), as the recipe's head
        self.num_classes = num_classes
        shape = (padded_num_classes(num_classes), sub_centers, dim)
        self.centers = nnx.Param(
            jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)
        )


class LandmarkModel(nnx.Module):
    """Images `[N, H, W, 3]` uint8 (0..255) -> embeddings `[N, dim]` float32."""

    def __init__(
        self,
        *,
        backbone: str,
        num_classes: int,
        embedding_dim: int = 512,
        sub_centers: int = 3,
        neck_activation: str = "swish",
        neck_bn: bool = True,
        gem_p: float = 3.0,
        dtype: str = "float32",
        drop_path_rate: float = 0.2,
        remat: bool = False,
        conv_impl: ConvImpl = "auto",
        rngs: nnx.Rngs,
    ):
        self.compute_dtype = DTYPES[dtype]
        self.backbone, feature_dim = create_backbone(
            backbone,
            rngs=rngs,
            dtype=self.compute_dtype,
            drop_path_rate=drop_path_rate,
            remat=remat,
            conv_impl=conv_impl,
        )
        self.pool = GeM(p=gem_p)
        self.neck = EmbeddingNeck(
            feature_dim,
            embedding_dim,
            neck_activation,
            batch_norm=neck_bn,
            rngs=rngs,
            dtype=self.compute_dtype,
        )
        self.head = SubCenterHead(num_classes, sub_centers, embedding_dim, rngs=rngs)
        self.embedding_dim = embedding_dim
        self.sub_centers = sub_centers

    def __call__(self, images: jax.Array) -> jax.Array:
        return _embed(self, images)


def _embed(model: LandmarkModel | GlobalDescriptor, images: jax.Array) -> jax.Array:
    """uint8 [N, H, W, 3] -> float32 [N, D]: normalise, backbone, GeM, neck."""
    with jax.named_scope("normalise"):
        x = images.astype(jnp.float32)
        x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    features = model.backbone(x.astype(model.compute_dtype))
    with jax.named_scope("pool_neck"):
        return model.neck(model.pool(features)).astype(jnp.float32)


class GlobalDescriptor(nnx.Module):
    """A landmark model without its head: images `[N, H, W, 3]` uint8 -> L2-normalised
    embeddings `[N, D]` float32 (the eval step's, `retrieval.extract.embed_fn`).

    It shares the model's backbone, pool and neck, so splitting it gives their
    state only: an exported descriptor does not carry a 200k-class head (1.2 GB
    at GLDv2 size) that it never reads.
    """

    def __init__(self, model: LandmarkModel):
        self.backbone, self.pool, self.neck = model.backbone, model.pool, model.neck
        self.compute_dtype = model.compute_dtype
        self.embedding_dim = model.embedding_dim

    def __call__(self, images: jax.Array) -> jax.Array:
        emb = _embed(self, images)
        return emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)


def set_batch_norm_momentum(module: nnx.Module, momentum: float) -> None:
    """Sets every BatchNorm's running-average momentum (flax convention: running =
    momentum * running + (1 - momentum) * batch) in ``module``."""
    for _, sub in nnx.iter_modules(module):
        if isinstance(sub, nnx.BatchNorm):
            sub.momentum = momentum


def build_model(model_config, num_classes: int, *, seed: int) -> LandmarkModel:
    """A LandmarkModel from the `model` section of a config.

    `model.bn_momentum` > 0 replaces the backbone's BatchNorm momentum (0 keeps
    the backbone's own). With `model.init_from` set (a folder written by `python -m
    gld_jax.models.import_weights`), the backbone starts from those weights; a
    checkpoint for another model or with missing/extra/mis-shaped keys is an error.
    """
    model = LandmarkModel(
        backbone=model_config.backbone,
        num_classes=num_classes,
        embedding_dim=model_config.embedding_dim,
        sub_centers=model_config.sub_centers,
        neck_activation=model_config.neck_activation,
        neck_bn=model_config.get("neck_bn", True),
        gem_p=model_config.gem_p,
        dtype=model_config.dtype,
        drop_path_rate=model_config.drop_path_rate,
        remat=model_config.remat,
        conv_impl=model_config.get("conv_impl", "auto"),
        rngs=nnx.Rngs(params=seed, dropout=seed + 1),
    )
    momentum = model_config.get("bn_momentum", 0.0)
    if momentum > 0:
        set_batch_norm_momentum(model.backbone, momentum)
    init_from = model_config.get("init_from", "")
    if init_from:
        from gld_jax.models.import_weights import load_backbone_checkpoint

        load_backbone_checkpoint(model.backbone, init_from, model_name=model_config.backbone)
    return model
