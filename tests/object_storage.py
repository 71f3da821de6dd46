"""Storage that is not the local disk, in one test process.

Two stand-ins, because no single one can serve every client a gs:// run uses:

- `ram://`: TensorFlow's in-process filesystem. `tf.io.gfile`, TFRecord
  writing and reading, and TF's TensorBoard writer all run on it, and so does
  our file layer (gld_jax.utils.fs), exactly as they do on gs://. A stray
  built-in `open` or `os.path` call on such a path fails (or writes a local
  folder named `ram:`, which the tests look for).
- `gs://` on a local GCS emulator (PyPI gcp-storage-emulator, an HTTP server
  speaking the GCS JSON API), for Orbax: its array data goes through
  TensorStore's own GCS driver, not through tf.io.gfile, and TensorStore knows
  no `ram://`. TensorStore is pointed at the emulator with
  TENSORSTORE_GCS_HTTP_URL, and Orbax's etils paths with fsspec/gcsfs
  (EPATH_USE_TF=0, STORAGE_EMULATOR_HOST): the same gs:// code paths in Orbax
  (its GCS commit-file atomicity, its GCS deleter) as on a real bucket.

TF's own GCS client cannot be pointed at an emulator (its endpoint is compiled
in), so TF reading gs:// itself is the one client these tests do not reach.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator

EMULATOR_BUCKET = "ckpt-bucket"


def _with_generation_headers() -> None:
    """Real GCS sends an object's generation as x-goog-generation on a media
    download, and TensorStore's GCS driver reads it from there; the emulator
    leaves it out. Wrap its download handler to add it (idempotent)."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    plain = objects.download
    if getattr(plain, "adds_generation", False):
        return

    def download(request, response, storage, *args, **kwargs):
        plain(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # not found: the handler has answered 404 already
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration") or 1)

    download.adds_generation = True
    objects.download = download
    for _, methods in server.HANDLERS:
        for verb, handler in list(methods.items()):
            if handler is plain:
                methods[verb] = download


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def object_storage() -> Iterator[str]:
    """ram:// served by TF and our file layer; gs://EMULATOR_BUCKET by a local
    GCS emulator for Orbax. Yields a fresh ram:// root; restores everything and
    deletes that root on exit."""
    import tensorflow as tf
    from etils.epath import gpath
    from gcp_storage_emulator.server import create_server

    from gld_jax.utils import fs

    _with_generation_headers()
    port = _free_port()
    server = create_server("localhost", port, in_memory=True, default_bucket=EMULATOR_BUCKET)
    server.start()
    url = f"http://localhost:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs (etils' gs:// backend once TF is off)
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # TensorStore: no credential lookup
        "EPATH_USE_TF": "0",  # etils' gs:// through fsspec, which honours the emulator
        "NO_GCE_CHECK": "True",  # google-auth: no metadata-server probe
    }
    saved_env = {k: os.environ.get(k) for k in env}
    saved_schemes = fs.SUPPORTED_SCHEMES
    os.environ.update(env)
    gpath._is_tf_installed.cache_clear()  # etils caches its EPATH_USE_TF decision
    fs.SUPPORTED_SCHEMES = (*saved_schemes, "ram")
    root = f"ram://{uuid.uuid4().hex}"
    try:
        yield root
    finally:
        fs.SUPPORTED_SCHEMES = saved_schemes
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        gpath._is_tf_installed.cache_clear()
        server.stop()
        with contextlib.suppress(tf.errors.OpError):  # TF's ram:// rmtree is partial
            tf.io.gfile.rmtree(root)
