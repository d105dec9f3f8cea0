"""Checks on a §5 result computed from its JSON alone (shared by worker and e2e tests)."""

from __future__ import annotations

import numpy as np
import torch

from model.geometry import axis_angle_to_rotmat, perspective_projection
from model.outputs import SMPLParams


def reprojection_px(body, smpl: dict, translation: list, keypoints: np.ndarray, image: dict) -> float:  # type: ignore[no-untyped-def]
    """Mean pixel error of a result's SMPL + camera against keypoints (17, 3): axis-angle ->
    body -> full-image pinhole at the image centre. image: the result's "image" object."""
    aa = torch.tensor(smpl["global_orient"] + smpl["body_pose"], dtype=torch.float64)
    rot = axis_angle_to_rotmat(aa.reshape(1, 24, 3)).float()
    params = SMPLParams(rot[:, :1], rot[:, 1:], torch.tensor([smpl["betas"]]))
    with torch.no_grad():
        kp3d = body.keypoints_only(params).coco17
    px = perspective_projection(
        kp3d, torch.tensor([translation]), torch.tensor([image["focal_length"]]),
        torch.tensor([[image["width"] / 2, image["height"] / 2]]),
    )[0].numpy()
    valid = keypoints[:, 2] > 0
    return float(np.linalg.norm(px[valid] - keypoints[valid, :2], axis=-1).mean())
