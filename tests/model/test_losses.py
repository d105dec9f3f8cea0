"""Specification of model/losses.py: each term, reductions, weighting, NaN handling."""

from __future__ import annotations

import pytest
import torch

from model.config import LossWeights
from model.geometry import axis_angle_to_rotmat
from model.losses import (
    NonFiniteLossError,
    TrainTargets,
    betas_loss,
    body_keypoints,
    cam_scale_loss,
    keypoint_2d_loss,
    keypoint_3d_loss,
    loss_test_u,
    loss_train,
    points_to_crop_normalized,
    pose_loss,
    project_points,
    reprojection_error_px,
    vertex_loss,
)
from model.outputs import BodyOutput, CropInfo, RegressorOutput, SMPLParams

torch.set_num_threads(1)


def crop_info(batch: int = 2) -> CropInfo:
    return CropInfo.from_boxes(
        torch.tensor([[320.0, 240.0], [200.0, 260.0]])[:batch],
        torch.tensor([256.0, 128.0])[:batch],
        torch.tensor([[480.0, 640.0]]).expand(batch, 2),
    )


def test_crop_corners_normalise_to_plus_minus_one() -> None:
    crop = crop_info(1)
    # A 256 px box makes a 256x192 crop at 1 px per px: corners at centre -/+ (96, 128).
    corners = torch.tensor([[[320.0 - 96, 240.0 - 128], [320.0 + 96, 240.0 + 128]]])
    norm = points_to_crop_normalized(corners, crop)
    assert torch.allclose(norm, torch.tensor([[[-1.0, -1.0], [1.0, 1.0]]]), atol=1e-6)


def test_2d_loss_is_confidence_weighted_mse_in_normalised_crop_coordinates() -> None:
    crop = crop_info()
    target = torch.cat([torch.rand(2, 17, 2) * 100 + 200, torch.ones(2, 17, 1)], -1)
    assert keypoint_2d_loss(target[..., :2], target, crop).item() == 0.0
    shifted = target[..., :2] + torch.tensor([3.0, 0.0])
    # 3 px in x: box 256 -> 3 crop px -> 2*3/192 normalised; box 128 -> 6 crop px.
    per = keypoint_2d_loss(shifted, target, crop, reduction="none")
    expected = torch.tensor([(6 / 192) ** 2 / 2, (12 / 192) ** 2 / 2])
    assert torch.allclose(per, expected, rtol=1e-4)
    assert torch.allclose(keypoint_2d_loss(shifted, target, crop), expected.mean(), rtol=1e-4)
    half = target.clone()
    half[:, ::2, 2] = 0.0  # confidence 0: those points do not count
    moved = shifted.clone()
    moved[:, ::2] += 50.0
    assert torch.allclose(
        keypoint_2d_loss(moved, half, crop, "none"),
        keypoint_2d_loss(shifted, half, crop, "none"),
    )


def test_2d_loss_checks_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, K, 3\)"):
        keypoint_2d_loss(torch.zeros(2, 17, 2), torch.zeros(2, 16, 3), crop_info())


def test_unknown_reduction_is_rejected() -> None:
    with pytest.raises(ValueError, match="valid: \\('mean', 'none'\\)"):
        betas_loss(torch.zeros(2, 10), torch.zeros(2, 10), reduction="sum")


def test_3d_joint_loss_aligns_pelvises() -> None:
    joints = torch.randn(2, 24, 3)
    assert keypoint_3d_loss(joints + torch.tensor([1.0, -2.0, 5.0]), joints).item() < 1e-10
    bent = joints.clone()
    bent[:, 10] += 0.1
    assert keypoint_3d_loss(bent, joints, "none").tolist() == pytest.approx(
        [0.03 / 72] * 2, rel=1e-4
    )


def test_masks_average_over_valid_samples_only() -> None:
    pred, target = torch.zeros(3, 10), torch.ones(3, 10)
    target[1] = 3.0
    mask = torch.tensor([1.0, 0.0, 1.0])
    assert betas_loss(pred, target, mask=mask).item() == pytest.approx(1.0)
    assert betas_loss(pred, target, "none", mask).tolist() == [1.0, 0.0, 1.0]
    assert betas_loss(pred, target, mask=torch.zeros(3)).item() == 0.0


def test_pose_vertex_and_camera_terms() -> None:
    rot = axis_angle_to_rotmat(torch.randn(2, 24, 3))
    assert pose_loss(rot, rot).item() == 0.0
    assert pose_loss(rot, torch.eye(3).expand_as(rot)).item() > 0.0
    verts = torch.randn(2, 50, 3)
    assert vertex_loss(verts + 0.2, verts).item() == pytest.approx(0.2, rel=1e-5)
    cams = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [1.0, 1.0, 1.0]])
    scale = cam_scale_loss(cams, "none")
    assert scale[0].item() == pytest.approx(1.0)
    assert scale[0] > scale[1] > scale[2] > 0


def test_projection_uses_the_full_image_camera() -> None:
    crop = crop_info(1)
    points = torch.tensor([[[0.0, 0.0, 0.0], [0.1, -0.2, 0.0]]])
    px = project_points(points, torch.tensor([[0.0, 0.0, 8.0]]), crop)
    f = 800.0
    assert torch.allclose(px[0, 0], torch.tensor([320.0, 240.0]))
    assert torch.allclose(px[0, 1], torch.tensor([320.0 + f * 0.1 / 8, 240.0 - f * 0.2 / 8]))


def test_body_keypoints_select_the_format() -> None:
    body = _body(torch.zeros(1, 24, 3))
    assert body_keypoints(body, "coco17").shape == (1, 17, 3)
    assert body_keypoints(body, "openpose25").shape == (1, 25, 3)
    assert body_keypoints(body, "smpl24") is body.joints
    with pytest.raises(ValueError, match="convert_keypoints"):
        body_keypoints(body, "mediapipe33")


def test_reprojection_error_in_pixels_ignores_unconfident_points() -> None:
    target = torch.tensor([[[10.0, 10.0, 1.0], [0.0, 0.0, 0.0]]])
    pred = torch.tensor([[[13.0, 14.0], [100.0, 100.0]]])
    assert reprojection_error_px(pred, target).tolist() == [5.0]


# --- combined losses over typed predictions -----------------------------------------------


def _pred(batch: int, seed: int, requires_grad: bool = False) -> RegressorOutput:
    gen = torch.Generator().manual_seed(seed)
    aa = 0.3 * torch.randn(batch, 24, 3, generator=gen)
    aa[:, 0] = torch.tensor([torch.pi, 0.0, 0.0])
    aa.requires_grad_(requires_grad)
    rot = axis_angle_to_rotmat(aa)
    cam = torch.tensor([[0.9, 0.0, 0.1]]).repeat(batch, 1).requires_grad_(requires_grad)
    betas = (0.5 * torch.randn(batch, 10, generator=gen)).requires_grad_(requires_grad)
    return RegressorOutput(SMPLParams(rot[:, :1], rot[:, 1:], betas), cam)


def _body(joints: torch.Tensor, vertices: torch.Tensor | None = None) -> BodyOutput:
    """A posed body given as tensors (the loss only reads them)."""
    return BodyOutput(vertices, joints, joints[:, :17], torch.cat([joints, joints[:, :1]], 1))


def _joints_from(pred: RegressorOutput) -> torch.Tensor:
    """Differentiable stand-in geometry (the losses only need joints that depend on the
    prediction): joint j along R_j's y axis at 5j cm, shifted by the mean of 3 betas."""
    axis_y = pred.params.rotmats()[..., :, 1]  # (B, 24, 3)
    spread = torch.arange(24.0)[None, :, None] * 0.05
    return axis_y * spread + 0.01 * pred.params.betas[:, :3].mean(1)[:, None, None]


def test_test_u_loss_terms_and_detached_auxiliary() -> None:
    crop = crop_info()
    pred, aux = _pred(2, 0, requires_grad=True), _pred(2, 1, requires_grad=True)
    joints, aux_joints = _joints_from(pred), _joints_from(aux)
    verts = torch.cat([joints, joints * 2], 1)
    aux_verts = torch.cat([aux_joints, aux_joints * 2], 1)
    kp = torch.cat([torch.rand(2, 17, 2) * 50 + 220, torch.ones(2, 17, 1)], -1)
    w = LossWeights()
    terms = loss_test_u(pred, _body(joints, verts), kp, crop, w, aux, _body(aux_joints, aux_verts))
    assert terms.pose > 0 and terms.betas > 0 and terms.keypoints_3d > 0 and terms.vertices > 0
    manual = (
        w.keypoints_2d * terms.keypoints_2d
        + w.keypoints_3d * terms.keypoints_3d
        + w.pose * terms.pose
        + w.betas * terms.betas
        + w.vertices * terms.vertices
        + w.cam_scale * terms.cam_scale
    )
    assert torch.allclose(terms.total, manual)
    terms.total.backward()
    assert aux.crop_cam.grad is None and aux.params.betas.grad is None  # aux is a target
    assert torch.isfinite(pred.params.betas.grad).all() and pred.params.betas.grad.abs().sum() > 0
    assert torch.isfinite(pred.crop_cam.grad).all() and pred.crop_cam.grad.abs().sum() > 0
    only_2d = loss_test_u(pred, _body(joints, verts), kp, crop, w)
    assert only_2d.pose.item() == 0.0 and only_2d.vertices.item() == 0.0
    assert set(terms.as_floats()) == {
        "total",
        "keypoints_2d",
        "keypoints_3d",
        "pose",
        "betas",
        "vertices",
        "cam_scale",
    }


def test_train_loss_is_finite_with_finite_gradients() -> None:
    crop = crop_info()
    pred, gt = _pred(2, 0, requires_grad=True), _pred(2, 5)
    joints, gt_joints = _joints_from(pred), _joints_from(gt)
    target = TrainTargets(
        params=gt.params,
        joints3d=gt_joints,
        keypoints_2d=torch.cat([torch.rand(2, 17, 2) * 50 + 220, torch.ones(2, 17, 1)], -1),
        crop=crop,
        vertices=gt_joints * 1.5,
        has_smpl=torch.tensor([1.0, 0.0]),
    )
    terms = loss_train(pred, _body(joints, joints * 1.5), target, LossWeights())
    assert torch.isfinite(terms.total) and terms.vertices > 0
    terms.total.backward()
    for t in (pred.params.betas, pred.crop_cam):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    per = loss_train(pred, _body(joints, joints * 1.5), target, LossWeights(), "none")
    assert per.pose[1].item() == 0.0 and per.total.shape == (2,)


def test_a_nan_loss_raises() -> None:
    crop = crop_info()
    pred = _pred(2, 0)
    joints = _joints_from(pred)
    kp = torch.cat([torch.rand(2, 17, 2) * 50 + 220, torch.ones(2, 17, 1)], -1)
    kp[0, 3, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="not finite"):
        loss_test_u(pred, _body(joints), kp, crop, LossWeights())
