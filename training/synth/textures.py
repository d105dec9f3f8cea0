"""Procedural textures and the photographs shipped in scikit-image's data folder.

Shared by backgrounds, occluders and augmentation. Every generator is a pure function of a
numpy Generator and a size, returning (H, W, 3) uint8.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

# Photos in skimage/data that contain no people (a photo of a person behind the rendered one
# would be an unlabelled person). Train and shifted sets are disjoint.
TRAIN_PHOTOS: tuple[str, ...] = (
    "brick.png", "grass.png", "gravel.png", "coffee.png", "chelsea.png",
    "motorcycle_left.png", "rocket.jpg", "coins.png", "clock_motion.png", "color.png",
)
SHIFTED_PHOTOS: tuple[str, ...] = (
    "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "moon.png", "cell.png", "page.png",
    "text.png",
)


def photo_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


@lru_cache(maxsize=32)
def load_photo(name: str) -> np.ndarray:
    """A skimage data photo as (H, W, 3) uint8 (grey ones repeated over channels)."""
    path = photo_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"background photo {path} is missing; reinstall scikit-image (`make install`)"
        )
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def random_color(rng: np.random.Generator, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """An RGB colour (3,) float in [lo, hi], drawn in HSV so hues are spread evenly."""
    hsv = np.array([rng.random(), rng.uniform(0.1, 1.0), rng.uniform(lo, hi)])
    return _hsv_to_rgb(hsv)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def value_noise(rng: np.random.Generator, hw: tuple[int, int], cells: int, octaves: int = 3) -> np.ndarray:
    """Smooth noise (H, W) float in [0, 1]: random grids upsampled bicubically and summed."""
    h, w = hw
    out = np.zeros(hw, dtype=np.float32)
    amp, total = 1.0, 0.0
    for octave in range(octaves):
        n = cells * 2**octave
        grid = rng.random((max(2, n * h // max(h, w)) + 1, max(2, n * w // max(h, w)) + 1))
        img = Image.fromarray((grid * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        out += amp * np.asarray(img, dtype=np.float32) / 255.0
        total += amp
        amp *= 0.5
    return out / total


def _colorize(field: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Blend two colours by a field in [0, 1] through a 256-entry table (fast at full size)."""
    t = np.linspace(0.0, 1.0, 256)[:, None]
    lut = np.clip((c0[None] * (1 - t) + c1[None] * t) * 255.0, 0, 255).astype(np.uint8)
    idx = np.clip(field * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return lut[idx]


def _coords(hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = hw
    side = np.float32(max(h, w))
    xs = np.arange(w, dtype=np.float32)[None, :] / side
    ys = np.arange(h, dtype=np.float32)[:, None] / side
    return np.broadcast_to(xs, hw), np.broadcast_to(ys, hw)


def gradient(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    xs, ys = _coords(hw)
    angle = rng.uniform(0, 2 * np.pi)
    field = xs * np.cos(angle) + ys * np.sin(angle)
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    return _colorize(field, random_color(rng), random_color(rng))


def noise(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    field = value_noise(rng, hw, int(rng.integers(2, 12)))
    return _colorize(field, random_color(rng), random_color(rng))


def stripes(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    xs, ys = _coords(hw)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(4, 40)
    field = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xs * np.cos(angle) + ys * np.sin(angle)))
    if rng.random() < 0.5:
        field = (field > 0.5).astype(np.float32)
    return _colorize(field, random_color(rng), random_color(rng))


def checker(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    xs, ys = _coords(hw)
    n = rng.uniform(3, 30)
    field = ((np.floor(xs * n) + np.floor(ys * n)) % 2).astype(np.float32)
    return _colorize(field, random_color(rng), random_color(rng))


def room(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """A wall and a floor meeting at a horizon line, each with its own texture."""
    h, w = hw
    wall = noise(rng, hw) if rng.random() < 0.5 else gradient(rng, hw)
    floor = checker(rng, hw) if rng.random() < 0.4 else noise(rng, hw)
    horizon = int(h * rng.uniform(0.3, 0.8))
    wall[horizon:] = floor[horizon:]
    return wall


def blobs(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    from PIL import ImageDraw

    h, w = hw
    img = Image.fromarray(gradient(rng, hw))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 25))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.02, 0.2) * max(h, w)
        color = tuple(int(c * 255) for c in random_color(rng))
        draw.ellipse([x - r, y - r * rng.uniform(0.5, 1.5), x + r, y + r], fill=color)
    return np.asarray(img)


def cells(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """Voronoi cells with flat colours (shifted split only)."""
    h, w = hw
    n = int(rng.integers(8, 60))
    seeds = rng.uniform(0, 1, size=(n, 2)) * [w, h]
    palette = np.stack([random_color(rng) for _ in range(n)])
    # Label a coarse grid, then upsample: the exact distance field at full size is slow.
    gh, gw = max(h // 4, 1), max(w // 4, 1)
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float32)
    pts = np.stack([xs * w / gw, ys * h / gh], axis=-1).reshape(-1, 1, 2)
    label = np.argmin(((pts - seeds[None]) ** 2).sum(-1), axis=1).reshape(gh, gw)
    small = (palette[label] * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.NEAREST))


def rings(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """Concentric rings around a random centre (shifted split only)."""
    xs, ys = _coords(hw)
    cx, cy = rng.uniform(0, 1, size=2)
    r = np.hypot(xs - cx, ys - cy)
    field = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(5, 30) * r + rng.uniform(0, 6.3))
    return _colorize(field, random_color(rng), random_color(rng))


def photo_crop(rng: np.random.Generator, hw: tuple[int, int], names: tuple[str, ...]) -> np.ndarray:
    """A random crop of one photo, resized to (H, W), maybe mirrored and re-toned."""
    h, w = hw
    photo = load_photo(names[int(rng.integers(len(names)))])
    ph, pw = photo.shape[:2]
    # Crop with the target aspect ratio, covering 40-100% of the photo's shorter fit.
    fit = min(ph / h, pw / w)
    scale = fit * rng.uniform(0.4, 1.0)
    ch, cw = max(int(h * scale), 2), max(int(w * scale), 2)
    y0 = int(rng.integers(0, ph - ch + 1))
    x0 = int(rng.integers(0, pw - cw + 1))
    crop = Image.fromarray(photo[y0:y0 + ch, x0:x0 + cw]).resize((w, h), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # Re-tone through per-channel lookup tables (PIL applies them in C).
    gain = rng.uniform(0.6, 1.3) * (1 + rng.uniform(-0.15, 0.15, size=3))
    offset = rng.uniform(-20, 20)
    levels = np.arange(256, dtype=np.float64)
    lut = np.concatenate([np.clip(levels * g + offset, 0, 255) for g in gain]).astype(np.uint8)
    return np.asarray(crop.point(lut.tolist()))


PROCEDURAL = {
    "gradient": gradient, "noise": noise, "stripes": stripes, "checker": checker,
    "room": room, "blobs": blobs, "cells": cells, "rings": rings,
}
