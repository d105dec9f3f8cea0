"""Camera-like degradations: defocus and motion blur, sensor noise, JPEG quality."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class DegradeConfig:
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    motion_prob: float = 0.1
    motion_length: tuple[int, int] = (3, 9)
    noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 6.0)
    jpeg_quality: tuple[int, int] = (60, 95)


def _motion_kernel(rng: np.random.Generator) -> ImageFilter.Kernel:
    # PIL's Kernel takes 3x3 or 5x5 only: longer streaks are applied as repeated passes.
    k = np.zeros((5, 5), dtype=np.float64)
    angle = rng.uniform(0, np.pi)
    for t in np.linspace(-2, 2, 9):
        k[int(round(2 + t * np.sin(angle))), int(round(2 + t * np.cos(angle)))] = 1.0
    return ImageFilter.Kernel((5, 5), k.reshape(-1).tolist(), scale=float(k.sum()))


def degrade(rng: np.random.Generator, image: np.ndarray, cfg: DegradeConfig) -> tuple[np.ndarray, int]:
    """Blur and noise applied to (H, W, 3) uint8; returns (image, JPEG quality to save with)."""
    img = Image.fromarray(image)
    if rng.random() < cfg.blur_prob:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(*cfg.blur_sigma))))
    if rng.random() < cfg.motion_prob:
        length = int(rng.integers(cfg.motion_length[0], cfg.motion_length[1] + 1))
        kernel = _motion_kernel(rng)
        for _ in range(max(1, length // 4)):
            img = img.filter(kernel)
    out = np.asarray(img)
    if rng.random() < cfg.noise_prob:
        sigma = float(rng.uniform(*cfg.noise_sigma))
        # Mostly luminance noise, one draw per pixel: a third of the cost of per-channel noise.
        grain = sigma * rng.standard_normal((*out.shape[:2], 1), dtype=np.float32)
        noisy = out.astype(np.float32) + grain
        out = np.clip(noisy, 0, 255).astype(np.uint8)
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    return out, quality
