"""Evaluation metrics (ARCHITECTURE §6), per sample: pure tensor functions.

3D errors are in millimetres on metre inputs: MPJPE and PVE after aligning the pelvises
(the midpoint of the SMPL hips, as the 3D loss), PA-MPJPE after the least-squares
similarity transform (`model.geometry.similarity_procrustes`). The 2D PCK counts the
visible keypoints within 5% of the box size of the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.geometry import similarity_procrustes
from model.losses import PELVIS_JOINTS

MM = 1000.0
PCK_THRESHOLD = 0.05


def _pelvis(joints: Tensor) -> Tensor:
    """(B, 24, 3) SMPL joints -> (B, 1, 3) pelvis (midpoint of the hips)."""
    return joints[:, list(PELVIS_JOINTS)].mean(dim=1, keepdim=True)


def _check_pair(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.shape != target.shape or pred.dim() != 3 or pred.shape[-1] != 3:
        raise ValueError(
            f"{name}: pred and target must both be (B, N, 3), got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )


def mpjpe(pred: Tensor, target: Tensor) -> Tensor:
    """Mean per-joint position error (mm), pelvis-aligned. pred, target: (B, 24, 3) m -> (B,)."""
    _check_pair(pred, target, "mpjpe")
    diff = (pred - _pelvis(pred)) - (target - _pelvis(target))
    return torch.linalg.vector_norm(diff, dim=-1).mean(dim=-1) * MM


def pa_mpjpe(pred: Tensor, target: Tensor) -> Tensor:
    """MPJPE (mm) after similarity Procrustes of pred onto target. (B, J, 3) m -> (B,)."""
    _check_pair(pred, target, "pa_mpjpe")
    aligned, _ = similarity_procrustes(pred.double(), target.double())
    err = torch.linalg.vector_norm(aligned - target.double(), dim=-1).mean(dim=-1)
    return (err * MM).to(pred.dtype)


def pve(
    pred_vertices: Tensor, target_vertices: Tensor, pred_joints: Tensor, target_joints: Tensor
) -> Tensor:
    """Per-vertex error (mm) after aligning each mesh's pelvis (from its own joints).

    pred_vertices, target_vertices: (B, V, 3) m. pred_joints, target_joints: (B, 24, 3) m.
    Returns (B,).
    """
    _check_pair(pred_vertices, target_vertices, "pve")
    diff = (pred_vertices - _pelvis(pred_joints)) - (target_vertices - _pelvis(target_joints))
    return torch.linalg.vector_norm(diff, dim=-1).mean(dim=-1) * MM


def pck(
    pred_px: Tensor, target: Tensor, box_size: Tensor, threshold: float = PCK_THRESHOLD
) -> Tensor:
    """Fraction of visible keypoints within threshold * box size. Returns (B,) in [0, 1].

    pred_px: (B, K, 2) pixels. target: (B, K, 3) pixels + confidence (visible: > 0).
    box_size: (B,) pixels. A sample with no visible keypoint scores NaN.
    """
    if pred_px.shape[:2] != target.shape[:2] or target.shape[-1] != 3 or pred_px.shape[-1] != 2:
        raise ValueError(
            f"pck: pred (B, K, 2) and target (B, K, 3) must agree, got {tuple(pred_px.shape)} "
            f"and {tuple(target.shape)}"
        )
    visible = target[..., 2] > 0
    dist = torch.linalg.vector_norm(pred_px - target[..., :2], dim=-1)
    hit = (dist <= threshold * box_size[:, None]) & visible
    return hit.sum(-1).to(pred_px.dtype) / visible.sum(-1).to(pred_px.dtype)


@dataclass(frozen=True)
class SampleErrors:
    """Per-sample metrics of B people: (B,) each (mm, mm, mm, fraction)."""

    mpjpe: Tensor
    pa_mpjpe: Tensor
    pve: Tensor
    pck: Tensor

    @staticmethod
    def cat(parts: list[SampleErrors]) -> SampleErrors:
        return SampleErrors(
            torch.cat([p.mpjpe for p in parts]),
            torch.cat([p.pa_mpjpe for p in parts]),
            torch.cat([p.pve for p in parts]),
            torch.cat([p.pck for p in parts]),
        )

    def means(self) -> dict[str, float]:
        """Means over samples (NaN-aware for PCK)."""
        return {
            "mpjpe": float(self.mpjpe.mean()),
            "pa_mpjpe": float(self.pa_mpjpe.mean()),
            "pve": float(self.pve.mean()),
            "pck": float(self.pck.nanmean()),
        }
