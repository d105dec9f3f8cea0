"""Background images: procedural textures or crops of shipped photographs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.synth import textures


@dataclass(frozen=True)
class BackgroundConfig:
    """procedural: names in `textures.PROCEDURAL`; photos: file names in skimage's data."""

    procedural: tuple[str, ...] = ("gradient", "noise", "stripes", "checker", "room", "blobs")
    photos: tuple[str, ...] = textures.TRAIN_PHOTOS
    photo_prob: float = 0.5

    def __post_init__(self) -> None:
        unknown = [n for n in self.procedural if n not in textures.PROCEDURAL]
        if unknown:
            raise ValueError(
                f"unknown background styles {unknown}; valid: {sorted(textures.PROCEDURAL)}"
            )


def sample_background(
    rng: np.random.Generator, hw: tuple[int, int], cfg: BackgroundConfig
) -> np.ndarray:
    """A background (H, W, 3) uint8."""
    if cfg.photos and (not cfg.procedural or rng.random() < cfg.photo_prob):
        return textures.photo_crop(rng, hw, cfg.photos)
    style = cfg.procedural[int(rng.integers(len(cfg.procedural)))]
    return textures.PROCEDURAL[style](rng, hw)
