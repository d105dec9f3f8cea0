"""Per-person labels: keypoint visibility from the rendered depth, boxes from the mask.

Visibility codes (stored as int8 next to each keypoint set) and the confidence each gets:
- `VISIBLE` (1.0): in the image, not hidden;
- `SELF_OCCLUDED` (0.5): another part of the body is in front of it (depth test);
- `OCCLUDED` (0.3): an occluder covers it;
- `OUTSIDE` (0.0): outside the image or behind the camera.
"""

from __future__ import annotations

import numpy as np

OUTSIDE, VISIBLE, SELF_OCCLUDED, OCCLUDED = 0, 1, 2, 3
CONFIDENCE = np.array([0.0, 1.0, 0.5, 0.3], dtype=np.float32)


def visibility_codes(
    points: np.ndarray,
    pixels: np.ndarray,
    vertices: np.ndarray,
    vertex_pixels: np.ndarray,
    depth: np.ndarray,
    occluders: np.ndarray,
    focal: float,
    own_radius_m: float = 0.12,
    tolerance_m: float = 0.03,
) -> np.ndarray:
    """Visibility code (K,) int8 of each keypoint.

    points: (K, 3) camera-frame keypoints; pixels: (K, 2) their projections;
    vertices: (V, 3) camera-frame mesh; vertex_pixels: (V, 2) their projections;
    depth: (H, W) rendered depth of the person alone (0 = empty); occluders: (H, W) bool.

    Joints lie inside the body, so comparing a joint's depth with the rendered surface
    would call every joint hidden. Instead each keypoint's own surface is the nearest mesh
    surface around it: vertices within `own_radius_m` in 3D that project within ~3 cm of it.
    The keypoint is self-occluded when the rendered surface lies clearly in front of that.
    """
    h, w = depth.shape
    k = len(points)
    codes = np.full(k, VISIBLE, dtype=np.int8)
    inside = (
        (points[:, 2] > 1e-3)
        & (pixels[:, 0] >= 0) & (pixels[:, 0] < w)
        & (pixels[:, 1] >= 0) & (pixels[:, 1] < h)
    )
    codes[~inside] = OUTSIDE
    idx = np.flatnonzero(inside)
    if idx.size == 0:
        return codes
    px = np.clip(np.floor(pixels[idx]).astype(np.int64), 0, [w - 1, h - 1])
    rendered = depth[px[:, 1], px[:, 0]]
    # Own vertices: a 3D ball query on a k-d tree, then the 2D footprint test on the few hits
    # (a dense K x V distance matrix costs more than the render at SMPL resolution).
    from scipy.spatial import cKDTree

    tree = cKDTree(vertices)
    radius_px = np.maximum(2.0, focal * 0.03 / np.maximum(points[idx, 2], 1e-3))
    own_depth = np.full(idx.size, np.inf)
    for n, hits in enumerate(tree.query_ball_point(points[idx], own_radius_m)):
        if not hits:
            continue
        hits = np.asarray(hits)
        close = np.linalg.norm(vertex_pixels[hits] - pixels[idx[n]], axis=-1) < radius_px[n]
        if close.any():
            own_depth[n] = vertices[hits[close], 2].min()
    # No own vertex nearby (tiny person, odd keypoint): assume the surface one radius in front.
    own_depth = np.where(np.isfinite(own_depth), own_depth, points[idx, 2] - own_radius_m)
    hidden = (rendered > 0) & (rendered < own_depth - tolerance_m)
    codes[idx[hidden]] = SELF_OCCLUDED
    covered = occluders[px[:, 1], px[:, 0]]
    codes[idx[covered]] = OCCLUDED
    return codes


def with_confidence(pixels: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Keypoints (K, 3) [x, y, confidence] from pixels (K, 2) and visibility codes (K,)."""
    return np.concatenate([pixels, CONFIDENCE[codes][:, None]], axis=1).astype(np.float32)


def box_from_mask(mask: np.ndarray) -> np.ndarray | None:
    """Tight box (4,) [x0, y0, x1, y1] (x1, y1 exclusive) of a (H, W) bool mask; None if empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return None
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float32)
