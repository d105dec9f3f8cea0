"""Test-time 2D keypoints: ground-truth projections with detector-like noise (ARCHITECTURE §6).

Gaussian noise with sigma = 3% of the person's box height on every point, and 10% of the
points dropped to confidence 0, as a detector misses some joints.
"""

from __future__ import annotations

import torch
from torch import Tensor

SIGMA_FRACTION = 0.03
DROP_FRACTION = 0.10


def detector_noise(
    keypoints: Tensor,
    box_height: Tensor,
    generator: torch.Generator | None = None,
    sigma_fraction: float = SIGMA_FRACTION,
    drop_fraction: float = DROP_FRACTION,
) -> Tensor:
    """Noisy copy of keypoints.

    keypoints: (B, K, 3) [x, y, confidence] pixels; box_height: (B,) pixels.
    Returns (B, K, 3): x, y plus N(0, (sigma_fraction * box_height)^2); each point dropped
    (confidence 0) with probability `drop_fraction`; points with confidence 0 stay 0.
    Pass a seeded `generator` for a reproducible evaluation.
    """
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"keypoints must be (B, K, 3), got {tuple(keypoints.shape)}")
    if box_height.shape != keypoints.shape[:1]:
        raise ValueError(f"box_height must be (B,) = {tuple(keypoints.shape[:1])}, got {tuple(box_height.shape)}")
    b, k, _ = keypoints.shape
    noise = torch.randn((b, k, 2), generator=generator, dtype=keypoints.dtype, device=keypoints.device)
    xy = keypoints[..., :2] + noise * (sigma_fraction * box_height)[:, None, None]
    keep = torch.rand((b, k), generator=generator, dtype=keypoints.dtype, device=keypoints.device)
    conf = torch.where(keep < drop_fraction, torch.zeros_like(keypoints[..., 2]), keypoints[..., 2])
    return torch.cat([xy, conf[..., None]], dim=-1)
