"""Rotations, camera projection and the CLIFF crop/full-image camera, as pure tensor functions.

Conventions (ARCHITECTURE §4):

- Rotation matrices act on column vectors: ``p' = R @ p``.
- Camera frame: x right, y down, z forward (OpenCV). Pixel coordinates are continuous, with
  pixel ``(row i, col j)`` covering ``[j, j+1) x [i, i+1)``; the principal point of a full
  image of size ``W x H`` is ``(W/2, H/2)``, the exact image centre.
- ``box_size`` is the side, in full-image pixels, of the square box a crop is cut from
  (CLIFF's ``scale * 200``); ``center`` is its centre. The 256x192 crop spans the box's full
  height (see `model.crop`), so the crop's normalised coordinates are
  ``(p - center) / (box_size / 2)``: [-1, 1] vertically, [-0.75, 0.75] horizontally.
- The crop camera ``(s, tx, ty)`` is weak-perspective in those normalised coordinates:
  ``p_norm = s * (X[:2] + (tx, ty))`` for a body point ``X`` in the camera frame without its
  translation. `cam_crop2full` turns it into the full-image translation that reproduces
  the same projection under the full perspective camera (exact at the body's root depth).

Every function works on any float dtype and device, keeps gradients, and uses only
elementwise ops, matmuls and reductions, so the ones on the network's path
(`rot6d_to_rotmat`, `cam_crop2full`, `perspective_projection`) export to ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Below this squared angle (rad²) the Rodrigues coefficients use their Taylor series: the
# closed forms divide by θ and lose all precision (and give NaN gradients) as θ → 0.
_SMALL_ANGLE_SQ = 1e-6


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """Cross product over the last dim, (..., 3) x (..., 3) -> (..., 3).

    Written out because `torch.linalg.cross` has no ONNX symbolic in older opsets.
    """
    ax, ay, az = a.unbind(-1)
    bx, by, bz = b.unbind(-1)
    return torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], dim=-1)


def rot6d_to_rotmat(x: Tensor) -> Tensor:
    """6D rotation representation to rotation matrices (Zhou et al. 2019, HMR/SPIN layout).

    x: (..., 6), read as a (..., 3, 2) matrix whose columns are the first two columns of R
       before orthonormalisation (the layout SPIN/CLIFF regressors emit).
    Returns (..., 3, 3): Gram–Schmidt on the two columns, the third is their cross product.
    """
    if x.shape[-1] != 6:
        raise ValueError(f"rot6d_to_rotmat expects (..., 6), got {tuple(x.shape)}")
    m = x.reshape(*x.shape[:-1], 3, 2)
    a1, a2 = m[..., 0], m[..., 1]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = _cross(b1, b2)
    return torch.stack([b1, b2, b3], dim=-1)


def rotmat_to_rot6d(rotmat: Tensor) -> Tensor:
    """Rotation matrices to the 6D representation, inverse of `rot6d_to_rotmat`.

    rotmat: (..., 3, 3).
    Returns (..., 6): the first two columns, flattened row by row ([R00, R01, R10, R11, R20, R21]).
    """
    _check_rotmat_shape(rotmat, "rotmat_to_rot6d")
    return rotmat[..., :, :2].reshape(*rotmat.shape[:-2], 6)


def _skew(v: Tensor) -> Tensor:
    """Cross-product matrix [v]x, (..., 3) -> (..., 3, 3)."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    rows = [
        torch.stack([zero, -z, y], dim=-1),
        torch.stack([z, zero, -x], dim=-1),
        torch.stack([-y, x, zero], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def axis_angle_to_rotmat(axis_angle: Tensor) -> Tensor:
    """Axis-angle (rotation vectors) to rotation matrices by Rodrigues' formula.

    axis_angle: (..., 3), direction = axis, norm = angle in radians.
    Returns (..., 3, 3). Exact at zero angle, with finite gradients there.
    """
    if axis_angle.shape[-1] != 3:
        raise ValueError(f"axis_angle_to_rotmat expects (..., 3), got {tuple(axis_angle.shape)}")
    theta_sq = (axis_angle * axis_angle).sum(-1)
    small = theta_sq < _SMALL_ANGLE_SQ
    # Double-where: the closed form is evaluated on a safe dummy angle where it is not used,
    # so its gradient (which would be NaN at 0) never reaches the output.
    safe_sq = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    theta = torch.sqrt(safe_sq)
    sin_over = torch.where(small, 1 - theta_sq / 6 + theta_sq**2 / 120, torch.sin(theta) / theta)
    one_minus_cos_over = torch.where(
        small, 0.5 - theta_sq / 24 + theta_sq**2 / 720, (1 - torch.cos(theta)) / safe_sq
    )
    k = _skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + sin_over[..., None, None] * k + one_minus_cos_over[..., None, None] * (k @ k)


def _safe_sqrt(x: Tensor) -> Tensor:
    # Clamping keeps sqrt's gradient finite at 0 (the clamped branch gets zero gradient).
    return torch.sqrt(torch.clamp(x, min=1e-12))


def rotmat_to_quaternion(rotmat: Tensor) -> Tensor:
    """Rotation matrices to unit quaternions (w, x, y, z) with w >= 0.

    rotmat: (..., 3, 3).
    Returns (..., 4). Each of the four standard formulas divides by one quaternion
    component; the best-conditioned one (the largest component) is chosen per rotation, so
    the result is accurate for every angle, π included.
    """
    _check_rotmat_shape(rotmat, "rotmat_to_quaternion")
    m = rotmat
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 2|w|, 2|x|, 2|y|, 2|z|
    q_abs = _safe_sqrt(
        torch.stack(
            [
                1 + m00 + m11 + m22,
                1 + m00 - m11 - m22,
                1 - m00 + m11 - m22,
                1 - m00 - m11 + m22,
            ],
            dim=-1,
        )
    )
    # Row k is 4 * q_k * (w, x, y, z), from the symmetric/antisymmetric parts of R.
    candidates = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    # The chosen component is >= 1/2 in magnitude, so the floor only guards unused rows.
    candidates = candidates / (2 * torch.clamp(q_abs, min=0.1))[..., None]
    best = F.one_hot(q_abs.argmax(dim=-1), num_classes=4).to(rotmat.dtype)
    quat = (candidates * best[..., None]).sum(dim=-2)
    quat = F.normalize(quat, dim=-1)
    return torch.where(quat[..., :1] < 0, -quat, quat)


def quaternion_to_axis_angle(quat: Tensor) -> Tensor:
    """Quaternions (w, x, y, z) to axis-angle with angle in [0, π].

    quat: (..., 4), unit norm (q and -q give the same result).
    Returns (..., 3). Finite gradients everywhere, including the identity.
    """
    if quat.shape[-1] != 4:
        raise ValueError(f"quaternion_to_axis_angle expects (..., 4), got {tuple(quat.shape)}")
    quat = torch.where(quat[..., :1] < 0, -quat, quat)
    w, v = quat[..., 0], quat[..., 1:]
    sin_half_sq = (v * v).sum(-1)
    small = sin_half_sq < _SMALL_ANGLE_SQ
    # Double-where again: each branch sees only inputs where it is finite (w ~ 1 when small).
    safe_sq = torch.where(small, torch.ones_like(sin_half_sq), sin_half_sq)
    safe_w = torch.where(small, w, torch.ones_like(w))
    sin_half = torch.sqrt(safe_sq)
    # angle / sin(angle/2), with angle = 2 atan2(|v|, w); its Taylor series in |v|/w near 0.
    scale = torch.where(
        small,
        2 / safe_w - 2 * sin_half_sq / (3 * safe_w**3),
        2 * torch.atan2(sin_half, w) / sin_half,
    )
    return v * scale[..., None]


def rotmat_to_axis_angle(rotmat: Tensor) -> Tensor:
    """Rotation matrices to axis-angle (rotation vectors) with angle in [0, π].

    rotmat: (..., 3, 3).
    Returns (..., 3). Goes through the quaternion, which stays accurate near 0 and near π
    (where the trace/antisymmetric-part formula breaks down), with finite gradients.
    """
    return quaternion_to_axis_angle(rotmat_to_quaternion(rotmat))


def _check_rotmat_shape(rotmat: Tensor, name: str) -> None:
    if rotmat.shape[-2:] != (3, 3):
        raise ValueError(f"{name} expects (..., 3, 3), got {tuple(rotmat.shape)}")


def _per_sample_focal(focal_length: Tensor, batch: int) -> Tensor:
    """(B,), (B, 1) or (B, 2) focal lengths -> (B, 2) (fx, fy)."""
    if focal_length.dim() == 1:
        focal_length = focal_length[:, None]
    if focal_length.dim() != 2 or focal_length.shape[-1] not in (1, 2):
        raise ValueError(f"focal_length must be (B,) or (B, 2), got {tuple(focal_length.shape)}")
    return focal_length.expand(batch, 2)


def perspective_projection(
    points: Tensor, translation: Tensor, focal_length: Tensor, camera_center: Tensor
) -> Tensor:
    """Pinhole projection of camera-frame points to full-image pixels.

    points: (B, N, 3) in the camera frame, before adding `translation`.
    translation: (B, 3) added to every point (e.g. the output of `cam_crop2full`).
    focal_length: (B, 2) as (fx, fy), or (B,) for fx = fy.
    camera_center: (B, 2) principal point (cx, cy) in pixels, usually (W/2, H/2).
    Returns (B, N, 2) pixel coordinates. Points must be in front of the camera (z > 0);
    no clamping is done, so the gradients are the true ones.
    """
    cam = points + translation[:, None, :]
    focal = _per_sample_focal(focal_length, points.shape[0])
    return cam[..., :2] / cam[..., 2:3] * focal[:, None, :] + camera_center[:, None, :]


def weak_perspective_projection(points: Tensor, crop_cam: Tensor) -> Tensor:
    """The crop camera's projection into normalised box coordinates.

    points: (B, N, 3) camera-frame points without translation (e.g. posed body joints).
    crop_cam: (B, 3) weak-perspective camera (s, tx, ty).
    Returns (B, N, 2): ``s * (X[:2] + (tx, ty))``; see `pixels_to_box` for the coordinates.
    """
    s = crop_cam[:, None, :1]
    return s * (points[..., :2] + crop_cam[:, None, 1:])


def pixels_to_box(points: Tensor, center: Tensor, box_size: Tensor) -> Tensor:
    """Full-image pixels to normalised box coordinates ``(p - center) / (box_size / 2)``.

    points: (B, N, 2) pixels. center: (B, 2). box_size: (B,).
    Returns (B, N, 2); the crop spans [-0.75, 0.75] x [-1, 1] (x, y) for a 256x192 crop
    without rotation.
    """
    return (points - center[:, None, :]) / (box_size[:, None, None] / 2)


def box_to_pixels(points: Tensor, center: Tensor, box_size: Tensor) -> Tensor:
    """Inverse of `pixels_to_box`: normalised box coordinates to full-image pixels.

    points: (B, N, 2). center: (B, 2). box_size: (B,).
    Returns (B, N, 2) pixels.
    """
    return points * (box_size[:, None, None] / 2) + center[:, None, :]


def default_focal_length(img_hw: Tensor) -> Tensor:
    """The default focal length sqrt(W² + H²) (about a 53° diagonal field of view).

    img_hw: (B, 2) image (height, width). Returns (B,).
    """
    hw = img_hw if img_hw.is_floating_point() else img_hw.to(torch.get_default_dtype())
    return torch.sqrt((hw * hw).sum(-1))


# CLIFF's bbox-info normalisation, fitted by its authors on Human3.6M so that each entry
# lands roughly in [-1, 1]: offsets / f * 2.8 and (b/f - 0.24) / 0.06.
_CLIFF_OFFSET_GAIN = 2.8
_CLIFF_SIZE_MEAN = 0.24
_CLIFF_SIZE_STD = 0.06


def cliff_bbox_info(
    center: Tensor,
    box_size: Tensor,
    img_hw: Tensor,
    focal_length: Tensor,
    normalize: bool = True,
) -> Tensor:
    """CLIFF's bounding-box information, the extra input that locates the crop in the image.

    center: (B, 2) box centre (cx, cy) in full-image pixels.
    box_size: (B,) side of the square box in pixels.
    img_hw: (B, 2) full image (height, width).
    focal_length: (B,) in pixels.
    Returns (B, 3). Raw (CLIFF paper eq. 5): ``[cx - W/2, cy - H/2, box_size] / f``.
    With ``normalize`` (the default, as CLIFF's released code feeds its regressor):
    ``[2.8 (cx - W/2) / f, 2.8 (cy - H/2) / f, (box_size / f - 0.24) / 0.06]``.
    """
    img_h, img_w = img_hw[:, 0], img_hw[:, 1]
    info = (
        torch.stack([center[:, 0] - img_w / 2, center[:, 1] - img_h / 2, box_size], dim=-1)
        / focal_length[:, None]
    )
    if not normalize:
        return info
    offsets = info[:, :2] * _CLIFF_OFFSET_GAIN
    size = (info[:, 2:] - _CLIFF_SIZE_MEAN) / _CLIFF_SIZE_STD
    return torch.cat([offsets, size], dim=-1)


def cam_crop2full(
    crop_cam: Tensor,
    center: Tensor,
    box_size: Tensor,
    img_hw: Tensor,
    focal_length: Tensor,
) -> Tensor:
    """CLIFF: weak-perspective crop camera -> translation in the full-image camera frame.

    crop_cam: (B, 3) (s, tx, ty), see the module docstring for what it projects to.
    center: (B, 2) box centre in full-image pixels. box_size: (B,) box side in pixels.
    img_hw: (B, 2) full image (height, width). focal_length: (B,) in pixels.
    Returns (B, 3) translation (Tx, Ty, Tz) in metres:
    ``Tz = 2 f / (s b)``, ``Tx = tx + 2 (cx - W/2) / (s b)``, ``Ty = ty + 2 (cy - H/2) / (s b)``.
    A point X then projects through the full camera (principal point at the image centre)
    to ``center + (b/2) s (X[:2] + t)``, where the crop camera put it, exactly for X_z = 0;
    otherwise off by about ``X_z / Tz`` times the point's normalised distance from the
    optical axis, box offset ``2 (center - image centre) / b`` included. s must be positive
    (the regressor's scale term keeps it so).
    """
    img_h, img_w = img_hw[:, 0], img_hw[:, 1]
    s, tx, ty = crop_cam.unbind(-1)
    # The epsilon only keeps a degenerate s = 0 finite; CLIFF uses the same 1e-9.
    sb = s * box_size + 1e-9
    tz = 2 * focal_length / sb
    full_tx = tx + 2 * (center[:, 0] - img_w / 2) / sb
    full_ty = ty + 2 * (center[:, 1] - img_h / 2) / sb
    return torch.stack([full_tx, full_ty, tz], dim=-1)


def cam_full2crop(
    translation: Tensor,
    center: Tensor,
    box_size: Tensor,
    img_hw: Tensor,
    focal_length: Tensor,
) -> Tensor:
    """Inverse of `cam_crop2full`: full-image translation -> crop camera (s, tx, ty).

    translation: (B, 3) with Tz > 0. center: (B, 2). box_size: (B,). img_hw: (B, 2).
    focal_length: (B,). Returns (B, 3). Used to make crop-camera targets from ground truth.
    """
    img_h, img_w = img_hw[:, 0], img_hw[:, 1]
    full_tx, full_ty, tz = translation.unbind(-1)
    s = 2 * focal_length / (box_size * tz)
    sb = s * box_size
    tx = full_tx - 2 * (center[:, 0] - img_w / 2) / sb
    ty = full_ty - 2 * (center[:, 1] - img_h / 2) / sb
    return torch.stack([s, tx, ty], dim=-1)


@dataclass(frozen=True)
class SimilarityTransform:
    """x -> scale * rotation @ x + translation, batched.

    scale: (B,). rotation: (B, 3, 3), a proper rotation (det +1). translation: (B, 3).
    """

    scale: Tensor
    rotation: Tensor
    translation: Tensor

    def apply(self, points: Tensor) -> Tensor:
        """points: (B, N, 3) -> (B, N, 3)."""
        rotated = points @ self.rotation.transpose(-1, -2)
        return self.scale[:, None, None] * rotated + self.translation[:, None, :]


def similarity_procrustes(source: Tensor, target: Tensor) -> tuple[Tensor, SimilarityTransform]:
    """Least-squares similarity alignment of source onto target (Umeyama 1991).

    source: (B, N, 3). target: (B, N, 3), corresponding points.
    Returns (aligned (B, N, 3), transform) minimising ``sum |s R x + t - y|²``, with R a
    proper rotation (the reflection a plain SVD can return is corrected). The alignment
    used by PA-MPJPE. Degenerate sources (all points equal) get scale 0 rather than NaN.
    """
    if source.shape != target.shape or source.shape[-1] != 3 or source.dim() != 3:
        raise ValueError(
            "similarity_procrustes expects source and target of the same shape (B, N, 3), "
            f"got {tuple(source.shape)} and {tuple(target.shape)}"
        )
    mu_src = source.mean(dim=1, keepdim=True)
    mu_tgt = target.mean(dim=1, keepdim=True)
    x = source - mu_src
    y = target - mu_tgt
    var_src = (x * x).sum(dim=(1, 2)) / source.shape[1]
    cov = y.transpose(1, 2) @ x / source.shape[1]  # (B, 3, 3), sum_i y_i x_i^T / N
    u, sigma, vh = torch.linalg.svd(cov)
    # Flip the last singular direction when U V^T is a reflection (det -1).
    sign = torch.sign(torch.linalg.det(u @ vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    d = torch.ones_like(sigma)
    d = torch.cat([d[:, :2], sign[:, None]], dim=1)
    rotation = u @ (d[:, :, None] * vh)
    scale = (sigma * d).sum(-1) / torch.clamp(var_src, min=torch.finfo(source.dtype).tiny)
    translation = mu_tgt[:, 0] - scale[:, None] * (rotation @ mu_src[:, 0, :, None])[..., 0]
    transform = SimilarityTransform(scale=scale, rotation=rotation, translation=translation)
    return transform.apply(source), transform
