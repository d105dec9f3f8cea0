"""Typed results passed between the body model, the networks and the TTO.

Rotations are rotation matrices throughout the model code (the regressor predicts 6D
rotations and converts them); axis-angle appears only at the edges (data files, the API).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SMPLParams:
    """SMPL parameters for a batch of B people.

    global_orient: (B, 1, 3, 3) root rotation.
    body_pose: (B, 23, 3, 3) rotations of the 23 non-root joints, SMPL order.
    betas: (B, 10) shape coefficients.
    """

    global_orient: Tensor
    body_pose: Tensor
    betas: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.betas.shape[0])

    def rotmats(self) -> Tensor:
        """All 24 joint rotations, (B, 24, 3, 3)."""
        return torch.cat([self.global_orient, self.body_pose], dim=1)

    def detach(self) -> SMPLParams:
        return SMPLParams(
            self.global_orient.detach(), self.body_pose.detach(), self.betas.detach()
        )


@dataclass(frozen=True)
class BodyOutput:
    """A posed body. Coordinates in metres, in the frame of the given translation.

    vertices: (B, V, 3), or None from the keypoint-only fast path.
    joints: (B, 24, 3) SMPL joints.
    coco17: (B, 17, 3) COCO-17 keypoints.
    openpose25: (B, 25, 3) OpenPose BODY_25 keypoints.
    """

    vertices: Tensor | None
    joints: Tensor
    coco17: Tensor
    openpose25: Tensor
