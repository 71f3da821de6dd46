"""Copy the weights of a Keras 3 ``EfficientNetB*`` (include_top=False) into ours.

Imports nothing from Keras/TF: it reads ``keras_model.layers`` (each with
``.name`` and ``.weights``, each weight with ``.name`` and ``.numpy()`` or
``__array__``), so models/ stays TF-free. Weights are matched by Keras layer
name ("block2a_dwconv/kernel" <-> ``model.blocks[1].dwconv.kernel``). The load is
all-or-nothing: any missing, unexpected or mis-shaped weight raises before a
single value is written.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

from gld_jax.models.assign import assign_weights
from gld_jax.models.efficientnet import EfficientNet
from gld_jax.models.layers import Conv2d, DepthwiseConv2d

# Keras layers that carry weights but are input preprocessing, not backbone:
# our EfficientNet takes already-normalised images.
_PREPROCESSING_LAYERS = frozenset({"Normalization", "Rescaling"})

_BN_NAMES = {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}
_BLOCK_LAYERS = (
    "expand_conv",
    "expand_bn",
    "dwconv",
    "bn",
    "se_reduce",
    "se_expand",
    "project_conv",
    "project_bn",
)


def _depthwise_from_keras(w: np.ndarray) -> np.ndarray:
    # Keras DepthwiseConv2D kernel [kh, kw, C, multiplier=1] -> ours HWIO [kh, kw, 1, C].
    return np.transpose(w, (0, 1, 3, 2))


def _layer_targets(layer_name: str, module: Any) -> dict[str, tuple[nnx.Variable, Any]]:
    """Keras 'layer/weight' names -> (our variable, converter) for one layer."""
    out: dict[str, tuple[nnx.Variable, Any]] = {}
    if isinstance(module, nnx.BatchNorm):
        for k_name, ours in _BN_NAMES.items():
            out[f"{layer_name}/{k_name}"] = (getattr(module, ours), None)
    elif isinstance(module, Conv2d):
        conv = _depthwise_from_keras if isinstance(module, DepthwiseConv2d) else None
        out[f"{layer_name}/kernel"] = (module.kernel, conv)
        if module.bias is not None:
            out[f"{layer_name}/bias"] = (module.bias, None)
    else:
        raise TypeError(f"no Keras mapping for {layer_name}: {type(module).__name__}")
    return out


def keras_weight_targets(model: EfficientNet) -> dict[str, tuple[nnx.Variable, Any]]:
    """Every weight of ``model`` under its Keras name, e.g. 'block1a_se_reduce/bias'."""
    targets: dict[str, tuple[nnx.Variable, Any]] = {}
    for name in ("stem_conv", "stem_bn", "top_conv", "top_bn"):
        targets.update(_layer_targets(name, getattr(model, name)))
    for prefix, block in zip(model.block_names, model.blocks, strict=True):
        for sub in _BLOCK_LAYERS:
            module = getattr(block, sub)
            if module is not None:
                targets.update(_layer_targets(f"{prefix}_{sub}", module))
    return targets


def _keras_weights(keras_model: Any) -> dict[str, np.ndarray]:
    weights: dict[str, np.ndarray] = {}
    for layer in keras_model.layers:
        if type(layer).__name__ in _PREPROCESSING_LAYERS:
            continue
        for w in layer.weights:
            # Keras 3 names weights 'kernel'; tf.keras 2 used 'stem_conv/kernel:0'.
            short = w.name.split("/")[-1].split(":")[0]
            value = w.numpy() if hasattr(w, "numpy") else np.asarray(w)
            weights[f"{layer.name}/{short}"] = np.asarray(value)
    return weights


def load_keras_efficientnet(model: EfficientNet, keras_model: Any) -> None:
    """Overwrite ``model``'s params and BN statistics with those of ``keras_model``, in place.

    Args:
      model: our EfficientNet of the same variant.
      keras_model: e.g. ``keras.applications.EfficientNetB0(include_top=False, ...)``.

    Raises:
      ValueError listing every missing, unexpected and mis-shaped weight; in that
      case ``model`` is left untouched.
    """
    load_keras_weight_dict(model, _keras_weights(keras_model))


def load_keras_weight_dict(model: EfficientNet, source: dict[str, np.ndarray]) -> None:
    """As ``load_keras_efficientnet``, from {'layer/weight': array} (e.g. read from a
    .h5/.keras file by ``weight_files.read_keras_weights``, preprocessing removed)."""
    assign_weights(
        keras_weight_targets(model),
        source,
        f"this EfficientNet ({model.variant})",
        source_name="Keras",
    )
