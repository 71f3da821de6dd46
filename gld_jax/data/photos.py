"""Photos from outside any conversion, prepared as a run's eval pipeline
prepares its records.

A photo first meets the converter's own decisions
(`tfrecords_tools.images.convert_image`, with the options the run's data was
converted with: rejection of empty, truncated, non-image and oversized files,
EXIF rotation, CMYK/16-bit/alpha to RGB, `max_side`). Then:

- JPEG content: the JPEG the converter would store (the file's own bytes for an
  upright RGB JPEG that needs no resize, as GLDv2's are) is decoded and resized
  by the pipeline's own function (`augment.decode_eval_image`, DCT scaling
  included), so a photo of a converted split reaches the model with exactly
  the pixels the run gave it;
- any other format (PNG, WebP, TIFF, ...): the converted RGB pixels are resized
  by the pipeline's resize (`augment.resize_square`), without the JPEG the
  converter would write for them, so a lossless copy of a photo reaches the
  model without a second JPEG loss.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from gld_jax.data.augment import decode_eval_image, resize_square
from gld_jax.utils import fs
from tfrecords_tools.images import EncodeOptions, ImageError, convert_image, stored_jpeg


class PhotoPreprocessor:
    """Bytes of one image file -> uint8 [S, S, 3] at one run's final image size.

    Thread-safe (the TF functions are traced once per instance); calls from
    several threads run their decodes in parallel.
    """

    def __init__(
        self, image_size: int, *, encode_options: EncodeOptions, dct_scaling: bool = True
    ) -> None:
        self.image_size = image_size
        self._options = encode_options
        self._decode = tf.function(
            lambda jpeg: decode_eval_image(jpeg, image_size, dct_scaling=dct_scaling),
            input_signature=[tf.TensorSpec([], tf.string)],
        )
        self._resize = tf.function(
            lambda pixels: resize_square(pixels, image_size),
            input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
        )

    def __call__(self, data: bytes) -> np.ndarray:
        """uint8 [S, S, 3]; raises ImageError (its str() is the reason)."""
        converted = convert_image(data, self._options)
        if converted.source_format != "JPEG":
            return self._resize(np.asarray(converted.rgb)).numpy()
        # The converter's record: these bytes, or its re-encoding (rotated, resized, CMYK).
        jpeg = stored_jpeg(converted, self._options.jpeg_quality).data
        try:
            return self._decode(jpeg).numpy()
        except tf.errors.InvalidArgumentError as e:
            # PIL read it, TensorFlow's libjpeg did not (e.g. arithmetic coding).
            reason = f"undecodable: TensorFlow cannot decode this JPEG ({e.message})"
            raise ImageError(reason) from None


@dataclasses.dataclass
class Photo:
    """One file's outcome: `images` (one uint8 [S, S, 3] per preprocessor) or
    `error` (one line: why it was not read)."""

    path: str
    images: list[np.ndarray] | None = None
    error: str = ""


def read_bytes(path: str) -> bytes:
    """The whole file at `path` (local or remote)."""
    with fs.open_file(path, "rb") as f:
        return f.read()


def _load(path: str, preprocessors: Sequence[Callable[[bytes], np.ndarray]]) -> Photo:
    try:
        data = read_bytes(path)
        return Photo(path, images=[prep(data) for prep in preprocessors])
    except ImageError as e:
        return Photo(path, error=str(e))
    except fs.path_errors() as e:
        return Photo(path, error=f"unreadable: {fs.error_line(e)}")


def load_photos(
    paths: Iterable[str],
    preprocessors: Sequence[Callable[[bytes], np.ndarray]],
    *,
    workers: int | None = None,
    ahead: int = 256,
) -> Iterator[Photo]:
    """Reads and prepares each file on a thread pool, yielding in `paths` order.

    Each file is read once and prepared by every preprocessor (one per model of
    an ensemble). At most `ahead` files are in flight, so memory stays bounded
    for any number of files.
    """
    workers = workers or min(32, (os.cpu_count() or 1) + 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        for path in paths:
            pending.append(pool.submit(_load, path, preprocessors))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
