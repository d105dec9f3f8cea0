"""Occluders pasted over the rendered person: shapes with flat or textured fills.

Occluders are drawn in 2D after rendering, so they are always in front of the person; the
returned mask marks their pixels for the keypoint visibility labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from training.synth import textures

TRAIN_STYLES: tuple[str, ...] = ("box", "ellipse", "polygon")
SHIFTED_STYLES: tuple[str, ...] = ("bars", "photo_blob")
_ALL_STYLES = TRAIN_STYLES + SHIFTED_STYLES


@dataclass(frozen=True)
class OccluderConfig:
    """prob: chance a sample gets occluders; max_count: at most this many; size: occluder
    side as a fraction of the person's box side (min, max)."""

    styles: tuple[str, ...] = TRAIN_STYLES
    prob: float = 0.35
    max_count: int = 2
    size: tuple[float, float] = (0.15, 0.5)
    photos: tuple[str, ...] = textures.TRAIN_PHOTOS

    def __post_init__(self) -> None:
        unknown = [s for s in self.styles if s not in _ALL_STYLES]
        if unknown:
            raise ValueError(f"unknown occluder styles {unknown}; valid: {list(_ALL_STYLES)}")


def _shape_mask(
    rng: np.random.Generator, style: str, hw: tuple[int, int], box: np.ndarray, size: tuple[float, float]
) -> np.ndarray:
    h, w = hw
    x0, y0, x1, y1 = box
    bw, bh = max(x1 - x0, 4.0), max(y1 - y0, 4.0)
    # Centre inside the person's box, so the occluder really covers part of the person.
    cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
    sx, sy = bw * rng.uniform(*size), bh * rng.uniform(*size)
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if style == "box":
        draw.rectangle([cx - sx / 2, cy - sy / 2, cx + sx / 2, cy + sy / 2], fill=255)
    elif style in ("ellipse", "photo_blob"):
        draw.ellipse([cx - sx / 2, cy - sy / 2, cx + sx / 2, cy + sy / 2], fill=255)
        if style == "photo_blob":  # lumpy outline: a few more ellipses around the first
            for _ in range(4):
                ox, oy = rng.uniform(-0.5, 0.5) * sx, rng.uniform(-0.5, 0.5) * sy
                r = rng.uniform(0.2, 0.4)
                draw.ellipse([cx + ox - sx * r, cy + oy - sy * r, cx + ox + sx * r, cy + oy + sy * r], fill=255)
    elif style == "polygon":
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 8))))
        pts = [(cx + sx / 2 * np.cos(a), cy + sy / 2 * np.sin(a)) for a in angles]
        draw.polygon(pts, fill=255)
    elif style == "bars":  # a fence: parallel bars across the whole box
        vertical = rng.random() < 0.6
        n = int(rng.integers(2, 6))
        thick = (bw if vertical else bh) * rng.uniform(0.04, 0.12)
        for i in range(n):
            t = (i + rng.uniform(0.2, 0.8)) / n
            if vertical:
                x = x0 + t * bw
                draw.rectangle([x - thick / 2, y0 - bh * 0.1, x + thick / 2, y1 + bh * 0.1], fill=255)
            else:
                y = y0 + t * bh
                draw.rectangle([x0 - bw * 0.1, y - thick / 2, x1 + bw * 0.1, y + thick / 2], fill=255)
    return np.asarray(mask) > 0


def _fill(rng: np.random.Generator, style: str, hw: tuple[int, int], photos: tuple[str, ...]) -> np.ndarray:
    if style == "photo_blob" and photos:
        return textures.photo_crop(rng, hw, photos)
    if rng.random() < 0.5:
        color = (textures.random_color(rng) * 255).astype(np.uint8)
        return np.broadcast_to(color, (*hw, 3))
    name = ("noise", "stripes", "checker", "gradient")[int(rng.integers(4))]
    return textures.PROCEDURAL[name](rng, hw)


def draw_occluders(
    rng: np.random.Generator, image: np.ndarray, person_box: np.ndarray, cfg: OccluderConfig
) -> np.ndarray:
    """Paint occluders over `image` (H, W, 3) uint8 in place; returns their mask (H, W) bool.

    person_box: (4,) [x0, y0, x1, y1] pixels of the person the occluders should overlap.
    """
    hw = image.shape[:2]
    union = np.zeros(hw, dtype=bool)
    if not cfg.styles or rng.random() >= cfg.prob:
        return union
    for _ in range(int(rng.integers(1, cfg.max_count + 1))):
        style = cfg.styles[int(rng.integers(len(cfg.styles)))]
        mask = _shape_mask(rng, style, hw, person_box, cfg.size)
        image[mask] = _fill(rng, style, hw, cfg.photos)[mask]
        union |= mask
    return union
