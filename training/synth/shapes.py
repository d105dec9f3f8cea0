"""Body shape sampler: SMPL betas ~ N(0, sigma^2), clipped to +-clip sigmas."""

from __future__ import annotations

import numpy as np

NUM_BETAS = 10


def sample_betas(
    rng: np.random.Generator, sigma: float = 1.0, clip: float = 3.0, num: int = NUM_BETAS
) -> np.ndarray:
    """Shape coefficients (num,) float64. Clipping keeps rare extreme bodies out of the data.

    sigma: standard deviation of every coefficient; clip: bound in units of sigma.
    """
    if sigma < 0 or clip <= 0:
        raise ValueError(f"sigma must be >= 0 and clip > 0 (got sigma={sigma}, clip={clip})")
    return np.clip(rng.normal(0.0, sigma, size=num), -clip * sigma, clip * sigma)
