"""Person crops: from a detection box to the 256x192 network input, and back.

Geometry (the contract `model.geometry`'s CLIFF camera relies on):

- A person is described by a square **box**: its centre ``center = (cx, cy)`` and side
  ``box_size`` in full-image pixels (CLIFF's ``scale * 200``).
- A crop of ``out_hw = (h, w)`` (256x192 by default) covers the box's **full height** and
  the central ``box_size * w / h`` of its width (3/4 for 256x192), centred on ``center``,
  optionally rotated about it. One full-image pixel becomes ``h / box_size`` crop pixels in
  both directions, so a person framed by `box_from_xyxy` fills the crop without distortion.
- Pixel coordinates are continuous and pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)``
  (its centre is ``(j + 0.5, i + 0.5)``), in the full image and in the crop alike. Without
  rotation the box's top-left corner ``(cx - box_size*w/(2h), cy - box_size/2)`` maps to crop
  ``(0, 0)`` and its bottom-right corner to ``(w, h)``.
- CLIFF's weak-perspective crop camera (s, tx, ty) is defined in normalised box
  coordinates ``(p - center) / (box_size / 2)`` (see `model.geometry.pixels_to_box`): the
  box *height* is the reference length, [-1, 1] spans the crop vertically and
  [-w/h, w/h] horizontally. In crop pixels: ``u = w/2 + (h/2) x_norm``, ``v = h/2 + (h/2) y_norm``.
- ``rotation_deg > 0`` turns the crop content counter-clockwise as displayed (image y points
  down); the matching 3D change is a rotation of the body about the camera's z axis by
  ``-rotation_deg``.

Numpy + PIL only: the API image has neither torch nor OpenCV (`apply_affine` also takes
torch tensors when given them).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

CROP_HW = (256, 192)


def box_from_xyxy(
    bbox: Any, rescale: float = 1.2, out_hw: tuple[int, int] = CROP_HW
) -> tuple[Any, Any]:
    """A detection box (x0, y0, x1, y1) -> the square box a crop is cut from.

    bbox: (4,) or (B, 4) in full-image pixels, numpy or torch.
    rescale: margin factor around the detection (1.2 = 20% larger).
    Returns (center (2,) or (B, 2), box_size () or (B,)), of bbox's array type (numpy float64
    for lists). ``box_size = rescale * max(height, width * h / w)``, so the whole detection,
    times `rescale`, fits inside the h x w crop.
    """
    is_torch = _is_torch(bbox)
    if not is_torch:
        bbox = np.asarray(bbox, dtype=np.float64)
    if bbox.shape[-1] != 4 or bbox.ndim not in (1, 2):
        raise ValueError(f"bbox must be (4,) or (B, 4) as x0, y0, x1, y1; got {tuple(bbox.shape)}")
    x0, y0, x1, y1 = (bbox[..., k] for k in range(4))
    height, width = y1 - y0, x1 - x0
    if bool((height <= 0).any()) or bool((width <= 0).any()):
        raise ValueError("bbox must have x1 > x0 and y1 > y0 (x0, y0, x1, y1 in pixels)")
    center = (bbox[..., :2] + bbox[..., 2:]) / 2
    widened = width * (out_hw[0] / out_hw[1])
    if is_torch:
        import torch

        side = torch.maximum(height, widened)
    else:
        side = np.maximum(height, widened)
    return center, side * rescale


def crop_affine(
    center: Any,
    box_size: float,
    out_hw: tuple[int, int] = CROP_HW,
    rotation_deg: float = 0.0,
) -> np.ndarray:
    """The affine map from full-image pixels to crop pixels.

    center: (2,) box centre (cx, cy). box_size: box side in pixels (> 0).
    out_hw: crop (height, width). rotation_deg: counter-clockwise turn of the crop content.
    Returns (2, 3) float64 ``A`` with ``crop = A[:, :2] @ p + A[:, 2]`` (see the module
    docstring for the exact box-to-crop correspondence).
    """
    box_size = float(box_size)
    if not box_size > 0:
        raise ValueError(f"box_size must be positive, got {box_size}")
    cx, cy = (float(v) for v in np.asarray(center, dtype=np.float64).reshape(2))
    k = out_hw[0] / box_size
    theta = math.radians(rotation_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    # With y down, [[cos, sin], [-sin, cos]] turns content counter-clockwise on screen.
    linear = k * np.array([[cos, sin], [-sin, cos]])
    offset = np.array([out_hw[1] / 2, out_hw[0] / 2]) - linear @ np.array([cx, cy])
    return np.concatenate([linear, offset[:, None]], axis=1)


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine map (e.g. crop pixels -> full-image pixels), (2, 3)."""
    affine = np.asarray(affine, dtype=np.float64)
    inv_linear = np.linalg.inv(affine[:, :2])
    return np.concatenate([inv_linear, -(inv_linear @ affine[:, 2])[:, None]], axis=1)


def apply_affine(points: Any, affine: Any) -> Any:
    """Map 2D points through an affine transform.

    points: (..., 2), numpy or torch. affine: (2, 3), or (B, 2, 3) with points (B, N, 2).
    Returns (..., 2) of points' type (torch in -> torch out, on points' device and dtype).
    """
    if _is_torch(points):
        import torch

        affine = torch.as_tensor(affine, dtype=points.dtype, device=points.device)
    else:
        points = np.asarray(points, dtype=np.float64)
        affine = np.asarray(affine, dtype=np.float64)
    if affine.shape[-2:] != (2, 3) or points.shape[-1] != 2:
        raise ValueError(
            f"apply_affine expects points (..., 2) and affine (2, 3) or (B, 2, 3); "
            f"got {tuple(points.shape)} and {tuple(affine.shape)}"
        )
    linear = affine[..., :2]
    offset = affine[..., 2]
    if affine.ndim == 3:
        # Batched: one transform per leading index, applied to that row's N points.
        return points @ linear.swapaxes(-1, -2) + offset[:, None, :]
    return points @ linear.T + offset


def crop_image(
    image: np.ndarray,
    center: Any,
    box_size: float,
    out_hw: tuple[int, int] = CROP_HW,
    rotation_deg: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the h x w crop of `image` for a box (bilinear, black outside the image).

    image: (H, W, 3) uint8. center: (2,). box_size: pixels. out_hw, rotation_deg: as in
    `crop_affine`.
    Returns (crop (h, w, 3) uint8, affine (2, 3) full-image px -> crop px).
    Boxes more than twice the crop height are first box-filtered down by an integer
    factor, so large people are averaged rather than aliased.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}; "
            "convert with np.asarray(PIL.Image.open(path).convert('RGB'))"
        )
    affine = crop_affine(center, box_size, out_hw, rotation_deg)
    source = Image.fromarray(image)
    factor = int(box_size // out_hw[0])
    sampled = affine
    if factor >= 2:
        # Pixel blocks of factor x factor become one pixel, so full-image coordinates are
        # divided by `factor` exactly (pixel centres stay centres under this convention).
        source = source.reduce(factor)
        sampled = np.concatenate([affine[:, :2] * factor, affine[:, 2:]], axis=1)
    inverse = invert_affine(sampled)
    # PIL wants the crop -> source map as (a, b, c, d, e, f) and samples at pixel centres.
    coeffs = tuple(float(v) for v in inverse.reshape(-1))
    crop = source.transform(
        (out_hw[1], out_hw[0]),
        Image.Transform.AFFINE,
        coeffs,
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0),
    )
    return np.asarray(crop), affine


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")
