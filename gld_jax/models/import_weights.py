"""Import ImageNet weights into a backbone checkpoint the trainer starts from.

    python -m gld_jax.models.import_weights --model resnest101 \\
        --source resnest101e.safetensors --output weights/resnest101
    python -m gld_jax.models.import_weights --model efficientnet_b3 \\
        --source efficientnetb3_notop.h5 --output weights/efficientnet_b3

Sources: timm/PyTorch state dicts (.pth/.pt/.bin/.safetensors; timm
``tf_efficientnet_b*``, ``resnest50d/101e/200e``) and Keras EfficientNet files
(.h5/.keras, ``keras.applications.EfficientNetB*``). The output folder holds an
Orbax checkpoint ``backbone/`` ({"params", "batch_stats"}, flat '.'-joined keys)
and ``import.json`` (model, source, counts). Train from it with
``--config.model.init_from=weights/resnest101``.

Any missing, unexpected or mis-shaped key stops the import (and the load) with
the full lists; nothing is ever partially loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax
import numpy as np
from flax import nnx

from gld_jax.models.efficientnet import EfficientNet
from gld_jax.models.keras_import import load_keras_weight_dict
from gld_jax.models.registry import backbone_names, create_backbone
from gld_jax.models.timm_import import load_timm_state_dict
from gld_jax.models.weight_files import WeightFileError, read_weight_file
from gld_jax.utils import fs
from gld_jax.utils.cli import quiet_tensorflow

META_FILE = "import.json"
STATE_DIR = "backbone"
# Keras layers in a keras.applications file that are not backbone weights: input
# preprocessing (our backbones take normalised images) and the classifier.
_KERAS_NON_BACKBONE = ("rescaling", "normalization", "predictions")


def _flat(module: nnx.Module, kind) -> dict[str, Any]:
    return {".".join(map(str, path)): v for path, v in nnx.to_flat_state(nnx.state(module, kind))}


def load_source_into(module: nnx.Module, path: str) -> dict:
    """Read a weight file and load it into ``module`` in place; returns a report.

    Raises:
      WeightFileError (unreadable file), ValueError (keys/shapes do not fit; lists them).
    """
    kind, weights = read_weight_file(path)
    if kind == "torch":
        skipped = load_timm_state_dict(module, weights)
    else:
        if not isinstance(module, EfficientNet):
            raise ValueError(
                f"{path}: Keras files hold EfficientNets; "
                f"{type(module).__name__} needs a timm state dict"
            )
        skipped = sorted(k for k in weights if k.split("/")[0].startswith(_KERAS_NON_BACKBONE))
        load_keras_weight_dict(module, {k: v for k, v in weights.items() if k not in skipped})
    return {"format": kind, "source_tensors": len(weights), "skipped": skipped}


def _absolute(path: str) -> str:
    """Orbax wants absolute local paths; URLs stay as they are."""
    return path if fs.is_remote(path) else os.path.abspath(path)


def save_backbone_checkpoint(module: nnx.Module, output: str, meta: dict) -> str:
    """Write ``module``'s params and BN statistics as an Orbax checkpoint under ``output``."""
    import orbax.checkpoint as ocp

    output = _absolute(output)
    fs.makedirs(output)
    tree = {
        "params": {k: np.asarray(v[...]) for k, v in _flat(module, nnx.Param).items()},
        "batch_stats": {k: np.asarray(v[...]) for k, v in _flat(module, nnx.BatchStat).items()},
    }
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.join(output, STATE_DIR), tree, force=True)
    fs.write_text(os.path.join(output, META_FILE), json.dumps(meta, indent=1))
    return output


def read_backbone_meta(path: str) -> dict:
    """The ``import.json`` of a checkpoint written by this module."""
    meta_path = os.path.join(path, META_FILE)
    if not fs.exists(meta_path):
        raise ValueError(f"{path}: not an imported backbone checkpoint (no {META_FILE})")
    return json.loads(fs.read_text(meta_path))


def load_backbone_checkpoint(module: nnx.Module, path: str, *, model_name: str) -> dict:
    """Load a checkpoint written by ``save_backbone_checkpoint`` into ``module``, in place.

    Raises:
      ValueError if it was made for another model, or listing missing, unexpected and
      mis-shaped keys (``module`` untouched then).
    """
    import orbax.checkpoint as ocp

    meta = read_backbone_meta(path)
    if meta.get("model") != model_name:
        raise ValueError(f"{path} holds {meta.get('model')!r} weights, not {model_name!r}")
    with ocp.StandardCheckpointer() as ckpt:
        saved = ckpt.restore(os.path.join(_absolute(path), STATE_DIR))
    problems, updates = [], []
    for group, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        ours, theirs = _flat(module, kind), dict(saved.get(group, {}))
        missing = sorted(set(ours) - set(theirs))
        unexpected = sorted(set(theirs) - set(ours))
        shapes = [
            f"{k}: checkpoint {tuple(np.shape(theirs[k]))}, model {ours[k].shape}"
            for k in sorted(set(ours) & set(theirs))
            if tuple(np.shape(theirs[k])) != tuple(ours[k].shape)
        ]
        if missing or unexpected or shapes:
            problems.append(
                f"  {group}: missing ({len(missing)}): {missing}\n"
                f"  {group}: unexpected ({len(unexpected)}): {unexpected}\n"
                f"  {group}: shape mismatches ({len(shapes)}): {shapes}"
            )
        updates += [(ours[k], theirs[k]) for k in ours if k in theirs]
    if problems:
        raise ValueError(f"checkpoint {path} does not fit {model_name}:\n" + "\n".join(problems))
    for var, value in updates:
        var[...] = jax.numpy.asarray(np.asarray(value), dtype=var.dtype)
    return meta


def import_weights(model_name: str, source: str, output: str) -> dict:
    """Build ``model_name``, load ``source`` into it, save the checkpoint; returns import.json."""
    if model_name not in backbone_names():
        raise ValueError(f"unknown model {model_name!r}; known: {', '.join(backbone_names())}")
    module, feature_dim = create_backbone(model_name, rngs=nnx.Rngs(0))
    report = load_source_into(module, source)
    n_params = sum(int(np.prod(v.shape)) for v in _flat(module, nnx.Param).values())
    meta = {
        "model": model_name,
        "source": _absolute(source),
        "params": n_params,
        "feature_dim": feature_dim,
        **report,
    }
    save_backbone_checkpoint(module, output, meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()
    parser = argparse.ArgumentParser(
        prog="python -m gld_jax.models.import_weights", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(backbone_names())}")
    parser.add_argument(
        "--source", required=True, help=".pth/.pt/.bin/.safetensors (timm) or .h5/.keras (Keras)"
    )
    parser.add_argument("--output", required=True, help="folder for the Orbax checkpoint")
    args = parser.parse_args(argv)
    try:
        meta = import_weights(args.model, args.source, args.output)
    except (ValueError, WeightFileError, TypeError, OSError) as e:
        print(f"import_weights: error: {e}", file=sys.stderr)
        return 2
    summary = {k: meta[k] for k in ("model", "params", "feature_dim", "format")}
    summary["skipped"] = len(meta["skipped"])
    summary["output"] = _absolute(args.output)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
