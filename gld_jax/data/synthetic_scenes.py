"""The synthetic set's pictures: a landmark's scene as a function of its class
seed, generic non-landmark scenes, and one photo-like view of a scene
(perspective warp, crop, blur, colour jitter, noise, occluders). The set's
plan and files are gld_jax.data.synthetic's."""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

JPEG_QUALITY = 90
# The random stream code of a landmark's scene, apart from synthetic's image kinds.
SCENE_STREAM = 4

RGB = tuple[int, int, int]


# --------------------------------------------------------------------------- colours


def _colour(
    rng: np.random.Generator,
    s: tuple[float, float] = (0.2, 0.9),
    v: tuple[float, float] = (0.2, 0.95),
    hue: float | None = None,
) -> RGB:
    """A random RGB colour drawn in HSV, so saturation and brightness stay controlled."""
    h = rng.uniform() if hue is None else hue % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(*s), rng.uniform(*v))
    return int(r * 255), int(g * 255), int(b * 255)


def _vertical_gradient(width: int, height: int, top: RGB, bottom: RGB) -> np.ndarray:
    """uint8 [height, width, 3] image fading linearly from `top` to `bottom`."""
    t = np.linspace(0.0, 1.0, max(height, 1), dtype=np.float32)[:, None, None]
    rows = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return np.broadcast_to(rows, (height, width, 3)).astype(np.uint8)


# --------------------------------------------------------------------------- scenes


def _draw_windows(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    rows: int,
    cols: int,
    colour: RGB,
) -> None:
    x0, y0, x1, y1 = box
    cw, ch = (x1 - x0) / cols, (y1 - y0) / rows
    for r in range(rows):
        for c in range(cols):
            wx, wy = x0 + c * cw, y0 + r * ch
            draw.rectangle(
                [wx + 0.25 * cw, wy + 0.2 * ch, wx + 0.75 * cw, wy + 0.7 * ch], fill=colour
            )


def draw_landmark_scene(class_seed: int, size: tuple[int, int]) -> Image.Image:
    """Draws the scene of one landmark: the same place for the same `class_seed`.

    Args:
      class_seed: seed of the class; the scene is a pure function of it and `size`.
      size: (width, height) of the world canvas in pixels.

    Returns:
      RGB PIL image of the scene: sky/ground gradients and 3-6 coloured structures
      (buildings with window grids, towers with roofs, domes, arches) at fixed places.
    """
    rng = np.random.default_rng([class_seed, SCENE_STREAM])
    w, h = size
    horizon = int(h * rng.uniform(0.55, 0.75))
    sky_hue = rng.uniform()
    sky = _vertical_gradient(
        w,
        horizon,
        _colour(rng, hue=sky_hue, v=(0.5, 1.0)),
        _colour(rng, hue=sky_hue + rng.uniform(-0.15, 0.15), v=(0.6, 1.0)),
    )
    ground = _vertical_gradient(
        w, h - horizon, _colour(rng, v=(0.3, 0.7)), _colour(rng, v=(0.1, 0.5))
    )
    canvas = Image.fromarray(np.concatenate([sky, ground], axis=0), "RGB")
    draw = ImageDraw.Draw(canvas)

    if rng.uniform() < 0.6:  # sun or moon at a fixed place in the sky
        r = h * rng.uniform(0.04, 0.09)
        cx, cy = w * rng.uniform(0.05, 0.95), horizon * rng.uniform(0.1, 0.5)
        draw.ellipse(
            [cx - r, cy - r, cx + r, cy + r], fill=_colour(rng, s=(0.0, 0.4), v=(0.85, 1.0))
        )
    palette_hue = rng.uniform()  # a class has a dominant palette, like a real place
    num_structures = int(rng.integers(3, 7))
    for _ in range(num_structures):
        kind = rng.choice(["building", "tower", "dome", "arch"])
        colour = _colour(rng, hue=palette_hue + rng.uniform(-0.2, 0.2))
        accent = _colour(rng)
        cx = w * rng.uniform(0.18, 0.82)
        base = horizon + h * rng.uniform(0.0, 0.08)
        if kind == "building":
            bw, bh = w * rng.uniform(0.12, 0.3), h * rng.uniform(0.2, 0.5)
            box = (cx - bw / 2, base - bh, cx + bw / 2, base)
            draw.rectangle(box, fill=colour)
            _draw_windows(draw, box, int(rng.integers(2, 7)), int(rng.integers(2, 6)), accent)
        elif kind == "tower":
            bw, bh = w * rng.uniform(0.04, 0.09), h * rng.uniform(0.35, 0.65)
            draw.rectangle([cx - bw / 2, base - bh, cx + bw / 2, base], fill=colour)
            roof = bh * rng.uniform(0.1, 0.3)
            draw.polygon(
                [(cx - bw * 0.7, base - bh), (cx + bw * 0.7, base - bh), (cx, base - bh - roof)],
                fill=accent,
            )
        elif kind == "dome":
            bw, bh = w * rng.uniform(0.15, 0.3), h * rng.uniform(0.12, 0.25)
            draw.rectangle([cx - bw / 2, base - bh, cx + bw / 2, base], fill=colour)
            dr = bw * rng.uniform(0.3, 0.5)
            draw.chord([cx - dr, base - bh - dr, cx + dr, base - bh + dr], 180, 360, fill=accent)
        else:  # arch: a gate whose opening shows a dark interior
            bw, bh = w * rng.uniform(0.12, 0.25), h * rng.uniform(0.2, 0.4)
            draw.rectangle([cx - bw / 2, base - bh, cx + bw / 2, base], fill=colour)
            ow = bw * 0.45
            dark = _colour(rng, v=(0.05, 0.25))
            draw.rectangle([cx - ow / 2, base - bh * 0.5, cx + ow / 2, base], fill=dark)
            draw.ellipse(
                [cx - ow / 2, base - bh * 0.5 - ow / 2, cx + ow / 2, base - bh * 0.5 + ow / 2],
                fill=dark,
            )
    return canvas


def draw_nonlandmark_scene(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Draws a random non-landmark picture (texture, clutter or an interior), no sky/horizon.

    Args:
      rng: source of randomness; every call gives a new picture.
      size: (width, height) in pixels.
    """
    w, h = size
    kind = int(rng.integers(3))
    if kind == 0:  # smooth random texture: coarse random colours upsampled
        gh, gw = int(rng.integers(2, 9)), int(rng.integers(2, 9))
        coarse = rng.integers(0, 256, size=(gh, gw, 3), dtype=np.uint8)
        canvas = Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    else:
        canvas = Image.new("RGB", (w, h), _colour(rng))
    draw = ImageDraw.Draw(canvas)
    if kind == 1:  # clutter: many small objects
        for _ in range(int(rng.integers(10, 40))):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(0.02, 0.12) * w
            box = [x - r, y - r * rng.uniform(0.5, 1.5), x + r, y + r * rng.uniform(0.5, 1.5)]
            if rng.uniform() < 0.5:
                draw.ellipse(box, fill=_colour(rng))
            else:
                draw.rectangle(box, fill=_colour(rng))
    elif kind == 2:  # interior: a wall, a floor and a few pieces of furniture
        floor = int(h * rng.uniform(0.6, 0.85))
        draw.rectangle([0, floor, w, h], fill=_colour(rng))
        for _ in range(int(rng.integers(2, 6))):
            fw, fh = w * rng.uniform(0.1, 0.35), h * rng.uniform(0.1, 0.4)
            x = rng.uniform(0, w - fw)
            draw.rectangle([x, floor - fh, x + fw, floor + h * 0.05], fill=_colour(rng))
    return canvas


# --------------------------------------------------------------------------- views


def _perspective_coeffs(dst: np.ndarray, src: np.ndarray) -> tuple[float, ...]:
    """PIL PERSPECTIVE coefficients mapping output points `dst` [4,2] to input `src` [4,2]."""
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(dst, src, strict=True)):
        a[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    return tuple(float(c) for c in np.linalg.solve(a, b))


def render_view(
    scene: Image.Image, rng: np.random.Generator, out_size: tuple[int, int]
) -> Image.Image:
    """One photograph of `scene`: random crop/scale, rotation, perspective and photometrics.

    Args:
      scene: RGB world canvas, larger than `out_size`.
      rng: randomness of this view.
      out_size: (width, height) of the photograph in pixels.

    Returns:
      RGB PIL image of size `out_size`.
    """
    ww, wh = scene.size
    ow, oh = out_size
    aspect = oh / ow
    # Crop width as a fraction of the world, kept small enough for the height to fit.
    frac = rng.uniform(0.5, 0.85)
    cw = min(ww * frac, wh * 0.95 / aspect)
    ch = cw * aspect
    cx = ww / 2 + rng.uniform(-0.4, 0.4) * (ww - cw)
    cy = wh / 2 + rng.uniform(-0.4, 0.4) * (wh - ch)
    angle = math.radians(rng.uniform(-8, 8))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * [cw / 2, ch / 2]
    corners = corners @ rot.T + [cx, cy]
    corners += rng.uniform(-0.06, 0.06, size=(4, 2)) * [cw, ch]  # perspective
    dst = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], np.float64)
    view = scene.transform(
        out_size,
        Image.Transform.PERSPECTIVE,
        _perspective_coeffs(dst, corners),
        resample=Image.Resampling.BILINEAR,
        fillcolor=_colour(rng),
    )
    if rng.uniform() < 0.5:  # occluders in front of the place: people, cars, branches
        draw = ImageDraw.Draw(view)
        for _ in range(int(rng.integers(1, 3))):
            x, y = rng.uniform(0, ow), rng.uniform(0.3 * oh, oh)
            rw, rh = rng.uniform(0.04, 0.15) * ow, rng.uniform(0.08, 0.3) * oh
            shape = draw.ellipse if rng.uniform() < 0.5 else draw.rectangle
            shape([x - rw, y - rh, x + rw, y + rh], fill=_colour(rng))
    if rng.uniform() < 0.3:
        view = view.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.5))))
    pixels = np.asarray(view, np.float32)
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.75, 1.25) + mean + rng.uniform(-25, 25)
    pixels = pixels * rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    pixels += rng.normal(0.0, rng.uniform(0.0, 5.0), size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()
