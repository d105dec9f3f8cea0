"""Losses of the method (ARCHITECTURE §3), as in the reference code.

Terms: 2D keypoints (confidence-weighted MSE in normalised crop coordinates), 3D joints
(pelvis-aligned MSE), SMPL pose (rotation-matrix MSE), betas (MSE), vertices (L1) and the
camera-scale positivity term ``exp(-10 s)²``. Each term takes ``reduction``:

- ``"mean"``: a scalar, the mean over every element (the reference's ``MSELoss``/``.mean()``
  convention, which the TTO's early-stop threshold is calibrated to); with a per-sample
  ``mask``, the mean over the masked-in samples (0 when there are none).
- ``"none"``: one value per sample, (B,): the mean over that sample's elements. The batched
  TTO uses it so that each person's gradient is that person's own.

`loss_train` (L_train) and `loss_test_u` (L_test-u) combine the terms with `LossWeights`;
both raise `NonFiniteLossError` on a NaN/Inf total.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from model.config import LossWeights
from model.crop import apply_affine
from model.geometry import perspective_projection
from model.outputs import BodyOutput, CropInfo, RegressorOutput, SMPLParams

REDUCTIONS = ("mean", "none")
# SMPL left_hip, right_hip: their midpoint is the pelvis the 3D joints are aligned on.
PELVIS_JOINTS = (1, 2)
KEYPOINT_FORMATS = ("coco17", "openpose25", "smpl24")


class NonFiniteLossError(FloatingPointError):
    """A loss came out NaN or Inf (diverged optimisation or bad inputs)."""


@dataclass(frozen=True)
class LossTerms:
    """Weighted total and the unweighted terms (scalars, or (B,) with reduction="none").

    Terms that do not apply are zero.
    """

    total: Tensor
    keypoints_2d: Tensor
    keypoints_3d: Tensor
    pose: Tensor
    betas: Tensor
    vertices: Tensor
    cam_scale: Tensor

    def as_floats(self) -> dict[str, float]:
        """Batch means of every term as floats (for logging)."""
        return {f.name: float(getattr(self, f.name).detach().mean()) for f in fields(self)}


@dataclass(frozen=True)
class TrainTargets:
    """Ground truth for L_train, B samples.

    params: SMPL parameters. joints3d: (B, 24, 3) SMPL joints (any frame; the loss aligns
    pelvises). vertices: (B, V, 3) or None (then no vertex term). keypoints_2d: (B, K, 3)
    full-image pixels + confidence, in `keypoint_format`. has_smpl / has_joints3d: (B,)
    masks for samples whose SMPL / 3D joints are valid (None = all valid).
    """

    params: SMPLParams
    joints3d: Tensor
    keypoints_2d: Tensor
    crop: CropInfo
    vertices: Tensor | None = None
    has_smpl: Tensor | None = None
    has_joints3d: Tensor | None = None
    keypoint_format: str = "coco17"


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {REDUCTIONS}")


def _reduce(per_element: Tensor, reduction: str, mask: Tensor | None = None) -> Tensor:
    """per_element: (B, ...) -> (B,) per-sample means or a scalar (see module docstring)."""
    _check_reduction(reduction)
    per_sample = per_element.reshape(per_element.shape[0], -1).mean(dim=1)
    if mask is not None:
        per_sample = per_sample * mask.to(per_sample.dtype)
    if reduction == "none":
        return per_sample
    if mask is None:
        return per_sample.mean()
    return per_sample.sum() / mask.to(per_sample.dtype).sum().clamp(min=1.0)


def points_to_crop_normalized(points_px: Tensor, crop: CropInfo) -> Tensor:
    """Full-image pixels (B, K, 2) -> normalised crop coordinates (B, K, 2).

    Maps through the crop affine, then ``2 u / w - 1``, ``2 v / h - 1``: the crop spans
    [-1, 1] in both directions (as the reference's 2D loss).
    """
    crop_px = apply_affine(points_px, crop.affine)
    h, w = crop.crop_hw
    scale = points_px.new_tensor([2.0 / w, 2.0 / h])
    return crop_px * scale - 1.0


def project_points(points3d: Tensor, translation: Tensor, crop: CropInfo) -> Tensor:
    """Camera-frame body points (B, K, 3) + translation (B, 3) -> full-image pixels (B, K, 2).

    The full-image pinhole camera of `crop` (focal_length, principal point at the centre).
    """
    return perspective_projection(points3d, translation, crop.focal_length, crop.camera_center())


def body_keypoints(body: BodyOutput, keypoint_format: str) -> Tensor:
    """The body's 3D keypoints in `keypoint_format` ("coco17", "openpose25", "smpl24")."""
    if keypoint_format == "coco17":
        return body.coco17
    if keypoint_format == "openpose25":
        return body.openpose25
    if keypoint_format == "smpl24":
        return body.joints
    raise ValueError(
        f"unsupported keypoint format {keypoint_format!r} for the loss; valid: "
        f"{KEYPOINT_FORMATS} (convert others with model.keypoints.convert_keypoints)"
    )


def keypoint_2d_loss(
    pred_px: Tensor, target: Tensor, crop: CropInfo, reduction: str = "mean"
) -> Tensor:
    """Confidence-weighted MSE of 2D keypoints in normalised crop coordinates.

    pred_px: (B, K, 2) predicted full-image pixels. target: (B, K, 3) pixels + confidence.
    """
    if pred_px.shape[:2] != target.shape[:2] or target.shape[-1] != 3:
        raise ValueError(
            f"pred (B, K, 2) and target (B, K, 3) must agree; got {tuple(pred_px.shape)} "
            f"and {tuple(target.shape)}"
        )
    pred = points_to_crop_normalized(pred_px, crop)
    tgt = points_to_crop_normalized(target[..., :2], crop)
    conf = target[..., 2:]
    return _reduce(conf * (pred - tgt) ** 2, reduction)


def reprojected_keypoint_loss(
    pred: RegressorOutput,
    pred_body: BodyOutput,
    target: Tensor,
    crop: CropInfo,
    keypoint_format: str = "coco17",
    reduction: str = "mean",
) -> Tensor:
    """The 2D loss of a prediction: project its keypoints with the full-image camera.

    target: (B, K, 3) full-image pixels + confidence in `keypoint_format`.
    """
    pred_px = project_points(
        body_keypoints(pred_body, keypoint_format), pred.translation(crop), crop
    )
    return keypoint_2d_loss(pred_px, target, crop, reduction)


def keypoint_3d_loss(
    pred: Tensor,
    target: Tensor,
    reduction: str = "mean",
    mask: Tensor | None = None,
    pelvis: tuple[int, ...] = PELVIS_JOINTS,
) -> Tensor:
    """Pelvis-aligned MSE of 3D joints. pred, target: (B, J, 3); mask: (B,) or None."""
    pred = pred - pred[:, list(pelvis)].mean(dim=1, keepdim=True)
    target = target - target[:, list(pelvis)].mean(dim=1, keepdim=True)
    return _reduce((pred - target) ** 2, reduction, mask)


def pose_loss(
    pred: Tensor, target: Tensor, reduction: str = "mean", mask: Tensor | None = None
) -> Tensor:
    """MSE of rotation matrices. pred, target: (B, 24, 3, 3)."""
    return _reduce((pred - target) ** 2, reduction, mask)


def betas_loss(
    pred: Tensor, target: Tensor, reduction: str = "mean", mask: Tensor | None = None
) -> Tensor:
    """MSE of shape coefficients. pred, target: (B, 10)."""
    return _reduce((pred - target) ** 2, reduction, mask)


def vertex_loss(
    pred: Tensor, target: Tensor, reduction: str = "mean", mask: Tensor | None = None
) -> Tensor:
    """L1 of vertices. pred, target: (B, V, 3), same frame (both without translation)."""
    return _reduce((pred - target).abs(), reduction, mask)


def cam_scale_loss(crop_cam: Tensor, reduction: str = "mean") -> Tensor:
    """``exp(-10 s)²``: pushes the crop-camera scale s of (B, 3) cameras above zero."""
    return _reduce(torch.exp(-10.0 * crop_cam[:, :1]) ** 2, reduction)


def check_finite(loss: Tensor, name: str) -> None:
    """Raise NonFiniteLossError when `loss` has a NaN/Inf entry.

    Inside a `torch.compile`d graph the check would break the graph; there the caller
    checks the graph's output instead (`model.tto.loss_and_grad`).
    """
    if torch.compiler.is_compiling():
        return
    if not bool(torch.isfinite(loss.detach()).all()):
        raise NonFiniteLossError(
            f"{name} is not finite ({loss.detach().flatten()[:4].tolist()}); check the "
            "inputs for NaN/Inf and lower the learning rate if the optimisation diverged"
        )


def loss_train(
    pred: RegressorOutput,
    pred_body: BodyOutput,
    target: TrainTargets,
    weights: LossWeights,
    reduction: str = "mean",
) -> LossTerms:
    """L_train: the supervised loss against ground truth.

    pred_body: the body posed with pred's parameters (no translation); its vertices are
    needed only when target.vertices is given.
    """
    smpl_mask, j3d_mask = target.has_smpl, target.has_joints3d
    kp2d = reprojected_keypoint_loss(
        pred, pred_body, target.keypoints_2d, target.crop, target.keypoint_format, reduction
    )
    kp3d = keypoint_3d_loss(pred_body.joints, target.joints3d, reduction, j3d_mask)
    pose = pose_loss(pred.params.rotmats(), target.params.rotmats(), reduction, smpl_mask)
    betas = betas_loss(pred.params.betas, target.params.betas, reduction, smpl_mask)
    verts = _optional_vertex_loss(pred_body, target.vertices, reduction, smpl_mask, kp2d)
    cam = cam_scale_loss(pred.crop_cam, reduction)
    return _combine(kp2d, kp3d, pose, betas, verts, cam, weights, "L_train")


def loss_test_u(
    pred: RegressorOutput,
    pred_body: BodyOutput,
    keypoints: Tensor,
    crop: CropInfo,
    weights: LossWeights,
    aux: RegressorOutput | None = None,
    aux_body: BodyOutput | None = None,
    keypoint_format: str = "coco17",
    reduction: str = "mean",
) -> LossTerms:
    """L_test-u: 2D keypoints plus agreement with the auxiliary prediction (detached).

    keypoints: (B, K, 3) the person's 2D keypoints (full-image pixels + confidence).
    aux / aux_body: f_u's prediction and its posed body; with aux None the agreement terms
    are zero (2D-only, as the EFT baseline and the no-auxiliary "meta" method). The vertex
    term needs vertices on both bodies; it is zero when either has none.
    """
    kp2d = reprojected_keypoint_loss(pred, pred_body, keypoints, crop, keypoint_format, reduction)
    zero = torch.zeros_like(kp2d)
    cam = cam_scale_loss(pred.crop_cam, reduction)
    if aux is None or aux_body is None:
        return _combine(kp2d, zero, zero, zero, zero, cam, weights, "L_test-u")
    aux, aux_joints = aux.detach(), aux_body.joints.detach()
    kp3d = keypoint_3d_loss(pred_body.joints, aux_joints, reduction)
    pose = pose_loss(pred.params.rotmats(), aux.params.rotmats(), reduction)
    betas = betas_loss(pred.params.betas, aux.params.betas, reduction)
    aux_vertices = None if aux_body.vertices is None else aux_body.vertices.detach()
    verts = _optional_vertex_loss(pred_body, aux_vertices, reduction, None, kp2d)
    return _combine(kp2d, kp3d, pose, betas, verts, cam, weights, "L_test-u")


def _optional_vertex_loss(
    pred_body: BodyOutput,
    target: Tensor | None,
    reduction: str,
    mask: Tensor | None,
    like: Tensor,
) -> Tensor:
    if target is None or pred_body.vertices is None:
        return torch.zeros_like(like)
    return vertex_loss(pred_body.vertices, target, reduction, mask)


def _combine(
    kp2d: Tensor,
    kp3d: Tensor,
    pose: Tensor,
    betas: Tensor,
    verts: Tensor,
    cam: Tensor,
    w: LossWeights,
    name: str,
) -> LossTerms:
    total = (
        w.keypoints_2d * kp2d
        + w.keypoints_3d * kp3d
        + w.pose * pose
        + w.betas * betas
        + w.vertices * verts
        + w.cam_scale * cam
    )
    check_finite(total, name)
    return LossTerms(total, kp2d, kp3d, pose, betas, verts, cam)


def reprojection_error_px(pred_px: Tensor, target: Tensor) -> Tensor:
    """Mean pixel distance over keypoints with confidence > 0, per sample.

    pred_px: (B, K, 2). target: (B, K, 3). Returns (B,) (NaN for a sample with no
    confident keypoint).
    """
    valid = (target[..., 2] > 0).to(pred_px.dtype)
    dist = torch.linalg.vector_norm(pred_px - target[..., :2], dim=-1)
    return (dist * valid).sum(-1) / valid.sum(-1)
