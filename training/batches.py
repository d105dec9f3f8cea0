"""From an `HMRBatch` to what the networks and the losses take (pure tensor functions).

- `network_input`: (B, 3, 256, 192) crops in [0, 1] -> ImageNet-normalised network input at
  the regressor's crop size;
- `batch_crop`: the batch's crops as a `CropInfo` (what projections and the 2D loss use);
- `train_targets`: ground truth for L_train, 3D joints and vertices from the body model
  where the file has SMPL parameters but no usable 3D joints (real SPIN files).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from model.backbones import IMAGENET_MEAN, IMAGENET_STD
from model.losses import TrainTargets
from model.outputs import CropInfo
from model.tto import BodyModelLike
from training.datasets import HMRBatch


def network_input(images: Tensor, crop_hw: tuple[int, int]) -> Tensor:
    """images: (B, 3, H, W) RGB in [0, 1] -> (B, 3, *crop_hw) ImageNet-normalised.

    The data set always cuts 256x192 crops; a smaller network crop (a CPU-sized config) is
    an antialiased resize of them, so every label (defined on the box) stays valid.
    """
    if images.ndim == 2:  # BlazePose output vectors (B, F): the network's input as it is
        return images
    if tuple(images.shape[-2:]) != tuple(crop_hw):
        images = F.interpolate(images, size=crop_hw, mode="bilinear", antialias=True)
    mean = images.new_tensor(IMAGENET_MEAN)[None, :, None, None]
    std = images.new_tensor(IMAGENET_STD)[None, :, None, None]
    return (images - mean) / std


def batch_crop(batch: HMRBatch) -> CropInfo:
    """The batch's crops (B people), in the dataset's 256x192 crop frame."""
    crop_hw = (int(batch.image.shape[-2]), int(batch.image.shape[-1]))
    return CropInfo(
        batch.center, batch.box_size, batch.img_hw, batch.focal_length, batch.crop_affine, crop_hw
    )


def train_targets(batch: HMRBatch, body: BodyModelLike, with_vertices: bool) -> TrainTargets:
    """Ground truth for L_train.

    joints3d (B, 24, 3): the file's where has_joints3d, else the body model's joints for
    the ground-truth SMPL parameters (pelvis-aligned in the loss, so the frame is
    irrelevant). vertices (B, V, 3): the posed ground-truth mesh when with_vertices.
    """
    params = batch.smpl_params()
    with torch.no_grad():
        gt_body = body(params) if with_vertices else body.keypoints_only(params)
    has_j3d = batch.has_joints3d[:, None, None]
    joints3d = torch.where(has_j3d, batch.joints3d, gt_body.joints.to(batch.joints3d.dtype))
    return TrainTargets(
        params=params,
        joints3d=joints3d,
        keypoints_2d=batch.keypoints2d,
        crop=batch_crop(batch),
        vertices=gt_body.vertices if with_vertices else None,
        has_smpl=batch.has_smpl,
        has_joints3d=batch.has_joints3d | batch.has_smpl,
    )
