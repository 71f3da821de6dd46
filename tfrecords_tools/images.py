"""Turns the bytes of one GLDv2 image file into the JPEG bytes a record stores.

Pure PIL/numpy (no TensorFlow): every decision about an odd input lives here, so the
converter's workers and its tests share one definition of "good image":

- an RGB (3-channel) JPEG, baseline or progressive, that needs no resize and no EXIF
  rotation is kept byte for byte;
- a grayscale JPEG is re-encoded as RGB, so every record decodes to 3 channels, as
  the TFDS feature spec promises, even for a reader that does not ask for them;
- PNG/WebP/GIF/... content (whatever the file name says), CMYK, palette, alpha and
  16-bit images are decoded, converted to 8-bit RGB and re-encoded as JPEG;
- an EXIF orientation other than 1 is applied to the pixels (tf.io.decode_jpeg ignores
  EXIF), then re-encoded;
- an image whose longer side exceeds max_side is shrunk (JPEGs first by DCT scaling in
  the decoder, so a 20,000 x 20,000 JPEG never exists in memory at full size);
- anything above max_pixels that cannot be decoded downscaled is refused, as are empty,
  truncated, non-image and undecodable files (ImageError with a short reason that is
  the same in every run over the same bytes).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

# A GLDv2 photo is rarely above 12 MP; 64 MP (8000 x 8000, 192 MB as RGB) bounds what one
# worker may hold while decoding.
DEFAULT_MAX_PIXELS = 64_000_000
_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the image upright (PIL's exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(Exception):
    """The file is not a usable image; str(e) is the reason recorded in the manifest."""


@dataclass(frozen=True)
class EncodeOptions:
    """How images are stored.

    Attributes:
      max_side: longest side in pixels after conversion (None = keep the size).
      jpeg_quality: quality of re-encoded JPEGs (1..100).
      max_pixels: refuse images above this many pixels unless a JPEG can be decoded
        downscaled (DCT scaling, up to 1/8 per side) to at most this many.
    """

    max_side: int | None = None
    jpeg_quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Encoded:
    """Stored JPEG bytes, their size in pixels, and why they differ from the input ('' = kept)."""

    data: bytes
    height: int
    width: int
    change: str = ""


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is no reason to lose the pixels
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode; 16-bit grey is scaled (65535 -> 255), not clipped."""
    if im.mode in _SIXTEEN_BIT:
        arr = np.asarray(im, dtype=np.float64)
        grey = np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels go on white, as a browser shows them.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _target_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    if max_side is None or max(width, height) <= max_side:
        return None
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _draft_scale(width: int, height: int, target: tuple[int, int] | None, max_pixels: int) -> int:
    """JPEG DCT scale (1, 2, 4 or 8): the largest that keeps both sides >= target, or the
    smallest that brings the pixels within max_pixels, whichever is larger."""

    def side(n: int, s: int) -> int:
        return -(-n // s)

    scales = (1, 2, 4, 8)
    fit = max(
        (
            s
            for s in scales
            if target is None or (side(width, s) >= target[0] and side(height, s) >= target[1])
        ),
        default=1,
    )
    within = next((s for s in scales if side(width, s) * side(height, s) <= max_pixels), 8)
    return max(fit if target is not None else 1, within)


@dataclass(frozen=True)
class Converted:
    """The converter's decision for one file, before a JPEG is written: either the
    input bytes to keep (`kept`) or the 8-bit RGB pixels to encode (`rgb`).

    `source_format` is PIL's name for the content ("JPEG", "PNG", "WEBP", ...),
    `change` as in Encoded."""

    source_format: str
    kept: bytes | None
    rgb: Image.Image | None
    height: int
    width: int
    change: str = ""


def convert_image(data: bytes, options: EncodeOptions = EncodeOptions()) -> Converted:
    """Decodes, checks and converts one image file's bytes as the converter does
    (see the module docstring), stopping short of the JPEG encoding.

    A reader that needs the pixels the converter would store (a photo outside any
    conversion) takes `rgb` directly, without the JPEG's loss.

    Raises:
      ImageError: empty, truncated, undecodable, or too large to decode.
    """
    return _guarded(_convert, data, options)


def encode_image(data: bytes, options: EncodeOptions = EncodeOptions()) -> Encoded:
    """The JPEG to store for one image file's bytes (see the module docstring).

    Args:
      data: the file's content.
      options: size limits and JPEG quality.

    Returns:
      Encoded(data, height, width, change) with height/width of the stored JPEG in pixels
      and `change` one of '', 'resized', 'rotated', 'converted <FORMAT> <MODE>',
      'downscaled huge' (several joined by '+').

    Raises:
      ImageError: empty, truncated, undecodable, or too large to decode.
    """
    return _guarded(_encode, data, options)


def _guarded(fn, data: bytes, options: EncodeOptions):
    if not data:
        raise ImageError("empty file")
    with warnings.catch_warnings():
        # Our own pixel limit replaces PIL's DecompressionBomb check, which would refuse a
        # huge JPEG before draft() could decode it downscaled.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return fn(data, options)
        except ImageError:
            raise
        except Exception as e:  # PIL raises many types for corrupt data; all mean "skip"
            raise ImageError(_decode_failure(data, e)) from None
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit


def _decode_failure(data: bytes, err: Exception) -> str:
    """Why PIL could not decode `data`, in words a user can act on.

    The reason goes into manifest.json, so it must be the same in every run over
    the same file: PIL's messages can embed a Python object's address
    ("<_io.BytesIO object at 0x7f...>"), which never reaches the reason."""
    if isinstance(err, UnidentifiedImageError):
        head = data[:32]
        if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
            text = head.decode("ascii").split("\n")[0].strip()
            return f"not an image: the file holds text ({text!r}...), e.g. a saved error page"
        return "not an image: no known image format (JPEG, PNG, WebP, GIF, BMP, TIFF, ...)"
    message = str(err)
    if "truncat" in message.lower():
        return "truncated: the file ends inside the image data (an interrupted download?)"
    message = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the file", message)
    message = re.sub(r"0x[0-9a-fA-F]{6,}", "0x...", message)
    return f"undecodable: corrupt image data ({message})"


def _convert(data: bytes, options: EncodeOptions) -> Converted:
    changes = []
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        fmt = im.format or "unknown"
        if width < 1 or height < 1:
            raise ImageError(f"empty image {width}x{height}")
        orientation = _orientation(im)
        target = _target_size(width, height, options.max_side)
        if fmt == "JPEG" and (target is not None or width * height > options.max_pixels):
            # DCT scaling: the decoder produces 1/2, 1/4 or 1/8 size directly.
            scale = _draft_scale(width, height, target, options.max_pixels)
            if scale > 1:
                im.draft(im.mode, (-(-width // scale), -(-height // scale)))
            if im.size != (width, height):
                changes.append("resized" if target is not None else "downscaled huge")
        if im.size[0] * im.size[1] > options.max_pixels:
            raise ImageError(f"too large: {width}x{height} pixels > limit {options.max_pixels}")
        im.load()  # full decode: catches truncated files, not just bad headers
        keep = (
            fmt == "JPEG"
            and im.mode == "RGB"
            and target is None
            and orientation not in _TRANSPOSE
            and not changes
        )
        if keep:
            return Converted(fmt, data, None, height, width)
        if fmt != "JPEG" or im.mode != "RGB":
            changes.append(f"converted {fmt} {im.mode}")
        rgb = _to_rgb(im)
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
        changes.append("rotated")
    size = _target_size(*rgb.size, options.max_side)
    if size is not None:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        if "resized" not in changes:
            changes.append("resized")
    return Converted(fmt, None, rgb, rgb.size[1], rgb.size[0], "+".join(changes))


def stored_jpeg(converted: Converted, quality: int) -> Encoded:
    """The JPEG a record stores for a conversion: the kept bytes, or the pixels
    encoded at `quality`."""
    if converted.kept is not None:
        return Encoded(converted.kept, converted.height, converted.width)
    buf = io.BytesIO()
    converted.rgb.save(buf, format="JPEG", quality=quality)
    return Encoded(buf.getvalue(), converted.height, converted.width, converted.change)


def _encode(data: bytes, options: EncodeOptions) -> Encoded:
    return stored_jpeg(_convert(data, options), options.jpeg_quality)
