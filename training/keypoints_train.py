"""Training the built-in heatmap keypoint detector (`model.keypoint_detector`) on our crops.

Targets are SimpleBaseline-style: one Gaussian per COCO-17 keypoint on the stride-4 heatmap,
zero for keypoints outside the crop; the loss is the visibility-weighted heatmap MSE. The
result goes into the detector slot of an existing model checkpoint (its regressors are kept
as they are), so one file carries everything the worker needs.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.crop import apply_affine
from model.keypoint_detector import KeypointDetector, build_detector
from training.batches import network_input
from training.config import KeypointTrainConfig
from training.datasets import HMRBatch, HMRDataset
from training.distributed import init_distributed, shutdown
from training.pretrain import autocast
from training.trainer import TrainResult, config_dict, train

log = logging.getLogger(__name__)


def crop_keypoints(batch: HMRBatch, crop_hw: tuple[int, int]) -> Tensor:
    """(B, 17, 3) keypoints in pixels of a crop_hw crop; confidence 0 outside the crop."""
    src_hw = batch.image.shape[-2:]
    xy = apply_affine(batch.keypoints2d[..., :2], batch.crop_affine)
    scale = xy.new_tensor([crop_hw[1] / src_hw[1], crop_hw[0] / src_hw[0]])
    return torch.cat([xy * scale, batch.keypoints2d_box[..., 2:]], dim=-1)


def heatmap_targets(points: Tensor, heatmap_hw: tuple[int, int], stride: int, sigma: float) -> Tensor:
    """points: (B, K, 3) crop px + conf -> (B, K, h, w) Gaussians (zero where conf <= 0).

    The torch twin of `model.keypoint_detector.gaussian_heatmaps` (same cell centres), so
    targets are built on the training device.
    """
    h, w = heatmap_hw
    ys = (torch.arange(h, device=points.device, dtype=points.dtype) + 0.5) * stride
    xs = (torch.arange(w, device=points.device, dtype=points.dtype) + 0.5) * stride
    dx2 = (xs[None, None, :] - points[..., :1]) ** 2  # (B, K, w)
    dy2 = (ys[None, None, :] - points[..., 1:2]) ** 2  # (B, K, h)
    maps = torch.exp(-(dy2[..., :, None] + dx2[..., None, :]) / (2 * (sigma * stride) ** 2))
    return maps * (points[..., 2] > 0)[..., None, None].to(maps.dtype)


def heatmap_loss(pred: Tensor, target: Tensor, visible: Tensor) -> Tensor:
    """Visibility-weighted MSE. pred, target: (B, K, h, w); visible: (B, K) bool -> scalar."""
    per_kp = ((pred.float() - target) ** 2).mean(dim=(-2, -1))
    weight = visible.to(per_kp.dtype)
    return 0.5 * (per_kp * weight).sum() / weight.sum().clamp(min=1.0)


class KeypointTask:
    stage = "keypoints"

    def __init__(self, config: KeypointTrainConfig, init: Checkpoint) -> None:
        self.config, self.init = config, init
        self.detector: KeypointDetector = build_detector(config.detector, seed=config.loop.seed)

    def modules(self) -> dict[str, nn.Module]:
        return {"detector": self.detector}

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.detector.parameters())}]

    def train_mode(self) -> None:
        self.detector.train()

    def step(self, batch: HMRBatch) -> dict[str, float]:
        det = self.detector
        crop_hw = det.config.crop_hw
        images = network_input(batch.image, crop_hw)
        with autocast(images.device, self.config.loop.amp):
            heat = det(images)
        points = crop_keypoints(batch, crop_hw)
        target = heatmap_targets(points, tuple(heat.shape[-2:]), det.stride, self.config.sigma)
        loss = heatmap_loss(heat, target, points[..., 2] > 0)
        loss.backward()
        return {"loss": float(loss.detach())}

    def checkpoint(self, metrics: dict[str, float], extra: dict[str, Any]) -> Checkpoint:
        state = {k: v.detach().cpu().clone() for k, v in self.detector.state_dict().items()}
        extra = {**self.init.extra, "detector_training": {**extra, "metrics": metrics}}
        return replace(self.init, detector_config=self.detector.config, detector=state, extra=extra)

    def load(self, ckpt: Checkpoint) -> None:
        if ckpt.detector is None:
            raise ValueError("the checkpoint to resume has no detector")
        self.detector.load_state_dict(ckpt.detector)


def run_keypoints(config: KeypointTrainConfig, resume: bool = False) -> TrainResult:
    """Train the detector; writes the updated checkpoint to config.out (default: in place)."""
    ctx = init_distributed(config.loop.device)
    try:
        torch.manual_seed(config.loop.seed)
        init = load_checkpoint(config.checkpoint)
        dataset = HMRDataset(list(config.data))
        log.info("training the keypoint detector on %d samples", len(dataset))
        task = KeypointTask(config, init)
        result = train(
            task, dataset, config.loop, config.optim, config.out_dir, ctx, config_dict(config), resume
        )
        if ctx.is_main:
            target = Path(config.out or config.checkpoint)
            save_checkpoint(load_checkpoint(result.checkpoint), target)
            log.info("detector written into the checkpoint %s", target)
        return result
    finally:
        shutdown(ctx)
