"""Typed results passed between the body model, the networks and the TTO.

Rotations are rotation matrices throughout the model code (the regressor predicts 6D
rotations and converts them); axis-angle appears only at the edges (data files, the API).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
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
        return SMPLParams(self.global_orient.detach(), self.body_pose.detach(), self.betas.detach())

    def to(self, device: torch.device | str) -> SMPLParams:
        return SMPLParams(
            self.global_orient.to(device), self.body_pose.to(device), self.betas.to(device)
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


@dataclass(frozen=True)
class CropInfo:
    """Where each person's crop sits in its full image, and that image's camera.

    center: (B, 2) box centre in full-image pixels. box_size: (B,) square box side in
    pixels (see `model.crop`). img_hw: (B, 2) full image (height, width).
    focal_length: (B,) pixels. affine: (B, 2, 3) full-image pixels -> crop pixels.
    crop_hw: the crop's (height, width).
    """

    center: Tensor
    box_size: Tensor
    img_hw: Tensor
    focal_length: Tensor
    affine: Tensor
    crop_hw: tuple[int, int] = (256, 192)

    @property
    def batch_size(self) -> int:
        return int(self.box_size.shape[0])

    @classmethod
    def from_boxes(
        cls,
        center: Tensor,
        box_size: Tensor,
        img_hw: Tensor,
        focal_length: Tensor | None = None,
        crop_hw: tuple[int, int] = (256, 192),
    ) -> CropInfo:
        """Un-rotated crops of square boxes; focal_length defaults to sqrt(W² + H²).

        center: (B, 2). box_size: (B,). img_hw: (B, 2). focal_length: (B,) or None.
        Raises ValueError for a degenerate box or camera.
        """
        from model.crop import crop_affine
        from model.geometry import default_focal_length

        dtype = center.dtype if center.is_floating_point() else torch.get_default_dtype()
        center = center.to(dtype)
        box_size = box_size.to(dtype)
        img_hw = img_hw.to(dtype)
        if focal_length is None:
            focal_length = default_focal_length(img_hw)
        _check_crop_values(center, box_size, img_hw, focal_length.to(dtype))
        affines = [
            torch.as_tensor(crop_affine(c.tolist(), float(b), crop_hw), dtype=dtype)
            for c, b in zip(center.detach().cpu(), box_size.detach().cpu(), strict=True)
        ]
        affine = torch.stack(affines).to(center.device) if affines else center.new_zeros(0, 2, 3)
        return cls(center, box_size, img_hw, focal_length.to(dtype), affine, crop_hw)

    def validate(self) -> None:
        """Raise ValueError when a box or camera is degenerate (non-finite, size/focal <= 0)."""
        b = self.batch_size
        shapes = {
            "center": (self.center, (b, 2)),
            "img_hw": (self.img_hw, (b, 2)),
            "focal_length": (self.focal_length, (b,)),
            "affine": (self.affine, (b, 2, 3)),
        }
        for name, (value, shape) in shapes.items():
            if tuple(value.shape) != shape:
                raise ValueError(f"CropInfo.{name} must be {shape}, got {tuple(value.shape)}")
        _check_crop_values(self.center, self.box_size, self.img_hw, self.focal_length)
        if not bool(torch.isfinite(self.affine).all()):
            raise ValueError("CropInfo.affine has NaN/Inf entries")

    def bbox_info(self) -> Tensor:
        """CLIFF's normalised bbox information, (B, 3), the regressor's second input."""
        from model.geometry import cliff_bbox_info

        return cliff_bbox_info(self.center, self.box_size, self.img_hw, self.focal_length)

    def camera_center(self) -> Tensor:
        """Principal points (cx, cy) = (W/2, H/2), (B, 2)."""
        return self.img_hw.flip(-1) / 2

    def select(self, index: Tensor | slice | int) -> CropInfo:
        """The crops at `index` (an int keeps a batch dimension of 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return CropInfo(
            self.center[index],
            self.box_size[index],
            self.img_hw[index],
            self.focal_length[index],
            self.affine[index],
            self.crop_hw,
        )

    @staticmethod
    def cat(crops: Sequence[CropInfo]) -> CropInfo:
        """Concatenate along the batch dimension (the crops share `crop_hw`)."""
        if not crops:
            raise ValueError("CropInfo.cat needs at least one CropInfo")
        if len({c.crop_hw for c in crops}) != 1:
            raise ValueError(f"CropInfo.cat needs one crop size, got {[c.crop_hw for c in crops]}")
        return CropInfo(
            torch.cat([c.center for c in crops]),
            torch.cat([c.box_size for c in crops]),
            torch.cat([c.img_hw for c in crops]),
            torch.cat([c.focal_length for c in crops]),
            torch.cat([c.affine for c in crops]),
            crops[0].crop_hw,
        )

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> CropInfo:
        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype)

        return CropInfo(
            move(self.center),
            move(self.box_size),
            move(self.img_hw),
            move(self.focal_length),
            move(self.affine),
            self.crop_hw,
        )


def _check_crop_values(center: Tensor, box_size: Tensor, img_hw: Tensor, focal: Tensor) -> None:
    if tuple(box_size.shape) != (center.shape[0],) or center.shape[-1:] != (2,):
        raise ValueError(
            f"center must be (B, 2) and box_size (B,); got {tuple(center.shape)} and "
            f"{tuple(box_size.shape)}"
        )
    for name, value in (
        ("center", center),
        ("box_size", box_size),
        ("img_hw", img_hw),
        ("focal_length", focal),
    ):
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} has NaN/Inf entries; pass finite box and camera values")
    if bool((box_size <= 1.0).any()):
        raise ValueError(
            f"degenerate box: box_size must be > 1 pixel, got {box_size.tolist()}; "
            "check the person's bbox (x0 < x1, y0 < y1)"
        )
    if bool((img_hw <= 0).any()) or bool((focal <= 0).any()):
        raise ValueError("image size and focal length must be positive")


@dataclass(frozen=True)
class RegressorOutput:
    """What f_w or f_u predicts for B people.

    params: SMPL parameters (rotation matrices).
    crop_cam: (B, 3) weak-perspective crop camera (s, tx, ty); see `model.geometry`.
    """

    params: SMPLParams
    crop_cam: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.crop_cam.shape[0])

    def detach(self) -> RegressorOutput:
        return RegressorOutput(self.params.detach(), self.crop_cam.detach())

    def to(self, device: torch.device | str) -> RegressorOutput:
        return RegressorOutput(self.params.to(device), self.crop_cam.to(device))

    @classmethod
    def from_numpy(
        cls, rotmat: np.ndarray, betas: np.ndarray, crop_cam: np.ndarray
    ) -> RegressorOutput:
        """A head graph's outputs: rotmat (B, 24, 3, 3), betas (B, 10), crop_cam (B, 3).
        The tensors share the arrays' memory."""
        rot = torch.from_numpy(rotmat)
        params = SMPLParams(rot[:, :1], rot[:, 1:], torch.from_numpy(betas))
        return cls(params, torch.from_numpy(crop_cam))

    def translation(self, crop: CropInfo) -> Tensor:
        """The full-image camera translation (B, 3) in metres (CLIFF's cam_crop2full)."""
        from model.geometry import cam_crop2full

        return cam_crop2full(
            self.crop_cam, crop.center, crop.box_size, crop.img_hw, crop.focal_length
        )

    def select(self, index: Tensor | slice | int) -> RegressorOutput:
        """The people at `index` (an int keeps a batch dimension of 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        p = self.params
        return RegressorOutput(
            SMPLParams(p.global_orient[index], p.body_pose[index], p.betas[index]),
            self.crop_cam[index],
        )

    @staticmethod
    def cat(outputs: list[RegressorOutput]) -> RegressorOutput:
        """Concatenate along the batch dimension."""
        if not outputs:
            raise ValueError("RegressorOutput.cat needs at least one output")
        return RegressorOutput(
            SMPLParams(
                torch.cat([o.params.global_orient for o in outputs]),
                torch.cat([o.params.body_pose for o in outputs]),
                torch.cat([o.params.betas for o in outputs]),
            ),
            torch.cat([o.crop_cam for o in outputs]),
        )


@dataclass(frozen=True)
class FitResult:
    """The outcome of one TTO call (`model.tto.fit`) for B people, in input order.

    initial: the regression result before any update. final: after the TTO (equal to
    initial for a skipped person).
    loss_history: per person, the 2D keypoint loss (unweighted, normalised crop
        coordinates) before each update: step 0, then each Adam step.
    final_loss: per person, the 2D loss of the final prediction.
    test_u_loss: per person, the L_test-u total of step 0 (None when skipped).
    steps_run: per person, parameter updates made, step 0 included (0 when skipped,
        at most 1 + TTOConfig.steps).
    stopped_early: per person, whether the early-stop threshold ended the fit.
    skipped: per person, why no TTO ran (e.g. no confident keypoint), else None.
    scope: the TTO scope used ("head" or "full").
    recorded: Adam step count -> the (B) predictions after that many Adam steps (after
        step 0), for the counts `fit(record_steps=...)` asked for; {} otherwise.
    """

    initial: RegressorOutput
    final: RegressorOutput
    loss_history: tuple[tuple[float, ...], ...]
    final_loss: tuple[float, ...]
    test_u_loss: tuple[float | None, ...]
    steps_run: tuple[int, ...]
    stopped_early: tuple[bool, ...]
    skipped: tuple[str | None, ...]
    scope: str
    recorded: dict[int, RegressorOutput] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.final.batch_size

    def select(self, span: slice) -> FitResult:
        """The people `span` of a batched fit, as if they had been fitted alone."""
        return replace(
            self,
            initial=self.initial.select(span),
            final=self.final.select(span),
            loss_history=self.loss_history[span],
            final_loss=self.final_loss[span],
            test_u_loss=self.test_u_loss[span],
            steps_run=self.steps_run[span],
            stopped_early=self.stopped_early[span],
            skipped=self.skipped[span],
            recorded={k: v.select(span) for k, v in self.recorded.items()},
        )

    def loss_start(self, i: int) -> float:
        """Person i's 2D loss before the TTO."""
        history = self.loss_history[i]
        return history[0] if history else self.final_loss[i]
