"""Read weight files into ``{name: numpy array}`` without torch, safetensors or Keras.

- ``.safetensors``: an 8-byte little-endian header length, a JSON header
  ``{name: {dtype, shape, data_offsets}}``, then the raw little-endian bytes.
- ``.pth`` / ``.pt`` / ``.bin``: ``torch.save``'s zip format (torch >= 1.6): a
  pickle ``*/data.pkl`` whose tensors point at raw storages ``*/data/<key>``. A
  restricted unpickler rebuilds them as numpy arrays; any other class in the
  pickle is refused, so a file cannot run code on load.
- ``.h5`` (Keras / tf.keras ``save_weights`` or ``save``: legacy HDF5 layout) and
  ``.keras`` (Keras 3 zip with ``model.weights.h5``): read with h5py, named
  ``layer/weight`` as ``keras_import`` expects.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import re
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from gld_jax.utils import fs

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}

_TORCH_STORAGES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class WeightFileError(ValueError):
    """A weight file that cannot be read; the message names the file and the reason."""


def _read(path: str) -> bytes:
    """The whole file (local or gs://): the zip and HDF5 readers seek, and a B7's
    weights are a few hundred MB."""
    with fs.open_file(path, "rb") as f:
        return f.read()


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file, in their stored dtypes and shapes."""
    raw = _read(path)
    if len(raw) < 8:
        raise WeightFileError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightFileError(f"{path}: bad safetensors header ({e})") from None
    data = memoryview(raw)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise WeightFileError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=np.dtype(dtype).newbyteorder("<"))
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def _rebuild_tensor(storage, offset, size, stride, *_):
    # torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, ...).
    if len(size) == 0:
        return np.array(storage[offset])
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data, *_):
    return data


class _StorageType:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _TorchUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(file)
        self._archive, self._prefix, self._path = archive, prefix, path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(_TORCH_STORAGES[name])
        raise WeightFileError(
            f"{self._path}: refusing to unpickle {module}.{name}; only plain state dicts "
            "(tensors in (Ordered)dicts) are read"
        )

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise WeightFileError(f"{self._path}: unknown persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}/data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"))
        return self._storages[key]


def read_torch_checkpoint(path: str) -> Any:
    """The unpickled object of a ``torch.save`` zip file, tensors as numpy arrays."""
    data = io.BytesIO(_read(path))
    if not zipfile.is_zipfile(data):
        raise WeightFileError(
            f"{path}: not a torch.save zip file (legacy pre-1.6 pickles are not read; "
            "re-save with a recent torch or convert to .safetensors)"
        )
    with zipfile.ZipFile(data) as archive:
        pkls = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise WeightFileError(f"{path}: expected one */data.pkl in the archive, got {pkls}")
        prefix = pkls[0][: -len("/data.pkl")]
        order = f"{prefix}/byteorder"
        if order in archive.namelist() and archive.read(order).strip() != b"little":
            raise WeightFileError(f"{path}: big-endian tensors are not supported")
        unpickler = _TorchUnpickler(io.BytesIO(archive.read(pkls[0])), archive, prefix, path)
        return unpickler.load()


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """A timm/PyTorch state dict from .pth/.pt/.bin or .safetensors as {key: array}.

    Checkpoints that wrap the weights (``{'state_dict': ...}``, ``{'model': ...}``)
    are unwrapped, and a DataParallel ``module.`` prefix is stripped.
    """
    if path.endswith(".safetensors"):
        sd = read_safetensors(path)
    else:
        sd = read_torch_checkpoint(path)
        if isinstance(sd, dict):
            for key in ("state_dict", "model", "state_dict_ema"):
                if key in sd and isinstance(sd[key], dict):
                    sd = sd[key]
                    break
    if not isinstance(sd, dict) or not all(isinstance(v, np.ndarray) for v in sd.values()):
        raise WeightFileError(f"{path}: does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _h5_legacy(group) -> dict[str, np.ndarray]:
    # tf.keras / Keras legacy HDF5: attrs layer_names; each layer group has attrs
    # weight_names like 'block1a_dwconv/depthwise_kernel:0' or 'kernel'.
    out = {}
    for layer in group.attrs["layer_names"]:
        layer = layer.decode() if isinstance(layer, bytes) else str(layer)
        g = group[layer]
        for wname in g.attrs.get("weight_names", []):
            wname = wname.decode() if isinstance(wname, bytes) else str(wname)
            short = wname.split("/")[-1].split(":")[0]
            out[f"{layer}/{short}"] = np.asarray(g[wname])
    return out


# Keras 3 native saving stores a layer's variables by position, in layer.weights order.
_KERAS3_VAR_NAMES = {
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "Conv2D": ("kernel", "bias"),
    "DepthwiseConv2D": ("kernel", "bias"),
    "Dense": ("kernel", "bias"),
    "Normalization": ("mean", "variance", "count"),
}


def _snake_case(name: str) -> str:
    # keras.src.utils.naming.to_snake_case: 'BatchNormalization' -> 'batch_normalization'.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


def _keras3_layer_keys(config: dict) -> dict[str, tuple[str, str]]:
    """{h5 group name: (layer name, class)}. Keras 3 stores a functional model's layers
    in model.layers order under snake_case(class) + '_<k>' for the k-th repeat."""
    seen: dict[str, int] = collections.Counter()
    out = {}
    for layer in config.get("config", {}).get("layers", []):
        snake = _snake_case(layer["class_name"])
        key = snake if seen[snake] == 0 else f"{snake}_{seen[snake]}"
        seen[snake] += 1
        out[key] = (layer["config"]["name"], layer["class_name"])
    return out


def _h5_keras3(group, keys: dict[str, tuple[str, str]], path: str) -> dict[str, np.ndarray]:
    out = {}
    layers = group.get("layers")
    if layers is None:
        raise WeightFileError(f"{path}: no 'layers' group in the Keras 3 weights")
    for key in layers:
        vars_ = layers[key].get("vars")
        if vars_ is None or len(vars_) == 0:
            continue
        layer, cls = keys.get(key, (key, None))
        names = _KERAS3_VAR_NAMES.get(cls or "")
        if names is None:
            raise WeightFileError(f"{path}: weights {key} ({cls}) have no known layer")
        for i in range(len(vars_)):
            out[f"{layer}/{names[i]}"] = np.asarray(vars_[str(i)])
    return out


def read_keras_weights(path: str) -> dict[str, np.ndarray]:
    """Weights of a Keras model file as {'layer/weight': array}.

    .h5 (legacy HDF5 from ``save_weights``/``save``, e.g. the keras.applications
    ``efficientnetb3_notop.h5``) or .keras (Keras 3 zip). Keras 3 ``.weights.h5``
    files carry no layer classes, so they are read only inside a .keras file.
    """
    import h5py  # only the Keras path needs it

    data = io.BytesIO(_read(path))
    if path.endswith(".keras"):
        with zipfile.ZipFile(data) as z:
            config = json.loads(z.read("config.json"))
            with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
                return _h5_keras3(f, _keras3_layer_keys(config), path)
    with h5py.File(data, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            raise WeightFileError(
                f"{path}: not a legacy Keras HDF5 weights file (no layer_names); "
                "save the model as .keras or with save_weights to .h5 in the legacy format"
            )
        return _h5_legacy(group)


def read_weight_file(path: str) -> tuple[str, dict[str, np.ndarray]]:
    """('torch' | 'keras', weights) for a file, picked by its extension."""
    if not fs.exists(path) or fs.isdir(path):
        raise WeightFileError(f"{path}: no such file")
    if path.endswith((".pth", ".pt", ".bin", ".safetensors")):
        return "torch", read_torch_state_dict(path)
    if path.endswith((".h5", ".hdf5", ".keras")):
        return "keras", read_keras_weights(path)
    raise WeightFileError(
        f"{path}: unknown weight format; expected .pth/.pt/.bin/.safetensors (timm) "
        "or .h5/.keras (Keras)"
    )
