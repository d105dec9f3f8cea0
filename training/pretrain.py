"""Pre-training (ARCHITECTURE §3): f_w and an initial f_u, supervised with L_train.

Step functions, each short and separate: `forward` (a network on a batch, optionally under
bfloat16 autocast), `supervised_loss` (L_train against ground truth, always in float32),
and `PretrainTask.step` (both networks: forward, loss, backward). The optimizer update,
logging and checkpoints belong to `training.trainer.train`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import Tensor, nn

from model.body import BodyModel
from model.checkpoint import Checkpoint, checkpoint_from_models
from model.config import LossWeights
from model.losses import LossTerms, TrainTargets, loss_train
from model.outputs import RegressorOutput, SMPLParams
from model.regressor import Regressor, build_regressor
from model.tto import BodyModelLike
from training.batches import network_input, train_targets
from training.config import PretrainConfig
from training.datasets import HMRBatch
from training.distributed import DistContext, init_distributed, shutdown
from training.features import open_dataset
from training.trainer import TrainResult, config_dict, train

log = logging.getLogger(__name__)


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA when amp (no loss scaling needed, unlike float16)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def as_float32(out: RegressorOutput) -> RegressorOutput:
    """The body model and the losses run in float32 whatever the network ran in."""
    p = out.params
    return RegressorOutput(
        SMPLParams(p.global_orient.float(), p.body_pose.float(), p.betas.float()),
        out.crop_cam.float(),
    )


def forward(net: Regressor, batch: HMRBatch, amp: bool = False) -> RegressorOutput:
    """net on the batch's crops: B predictions (float32)."""
    images = network_input(batch.image, net.config.crop_hw)
    with autocast(images.device, amp):
        out = net(images, batch.bbox_info)
    return as_float32(out)


def supervised_loss(
    pred: RegressorOutput, targets: TrainTargets, body: BodyModelLike, weights: LossWeights
) -> LossTerms:
    """L_train of B predictions (the mesh is posed only when the vertex term needs it)."""
    pred_body = body(pred.params) if targets.vertices is not None else body.keypoints_only(pred.params)
    return loss_train(pred, pred_body, targets, weights)


def term_scalars(prefix: str, terms: LossTerms) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in terms.as_floats().items()}


class PretrainTask:
    """f_w (and f_u) trained side by side on the same batches, each with L_train."""

    stage = "pretrain"

    def __init__(self, config: PretrainConfig, body: BodyModel) -> None:
        self.config = config
        self.body = body
        seed = config.loop.seed
        self.f_w = build_regressor(config.regressor, seed=seed)
        # Own initialisation: f_u must not start as a copy of f_w.
        self.f_u = build_regressor(config.regressor, seed=seed + 1) if config.train_aux else None
        if config.init_backbone is not None:
            init_backbones(config.init_backbone, [m for m in (self.f_w, self.f_u) if m is not None])

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"f_w": self.f_w}
        if self.f_u is not None:
            mods["f_u"] = self.f_u
        return mods

    def param_groups(self) -> list[dict[str, Any]]:
        nets = [self.f_w] + ([self.f_u] if self.f_u is not None else [])
        return [{"params": [p for n in nets for p in n.parameters()]}]

    def train_mode(self) -> None:
        self.f_w.train()
        if self.f_u is not None:
            self.f_u.train()

    def step(self, batch: HMRBatch) -> dict[str, float]:
        weights, amp = self.config.loss_weights, self.config.loop.amp
        targets = train_targets(batch, self.body, with_vertices=weights.vertices != 0)
        terms_w = supervised_loss(forward(self.f_w, batch, amp), targets, self.body, weights)
        loss: Tensor = terms_w.total
        scalars = term_scalars("f_w", terms_w)
        if self.f_u is not None:
            terms_u = supervised_loss(forward(self.f_u, batch, amp), targets, self.body, weights)
            loss = loss + terms_u.total
            scalars |= term_scalars("f_u", terms_u)
        loss.backward()
        scalars["loss"] = float(terms_w.total.detach())
        return scalars

    def checkpoint(self, metrics: dict[str, float], extra: dict[str, Any]) -> Checkpoint:
        return checkpoint_from_models(
            self.f_w,
            self.config.tto,
            str(self.body.id),
            f_u=self.f_u,
            model_version=f"pretrain-{extra['step']}",
            metrics=metrics,
            extra=extra,
        )

    def load(self, ckpt: Checkpoint) -> None:
        self.f_w.load_state_dict(ckpt.f_w)
        if self.f_u is not None:
            if ckpt.f_u is None:
                raise ValueError("the checkpoint to resume has no f_u, this run trains one")
            self.f_u.load_state_dict(ckpt.f_u)


def init_backbones(path: str, nets: list[Regressor]) -> None:
    """Copy the backbone of the keypoint detector in checkpoint `path` into each net's.

    Raises ValueError when the checkpoint has no detector or its backbone differs from the
    regressors' (name, width), naming both.
    """
    from model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt.detector is None or ckpt.detector_config is None:
        raise ValueError(f"--init-backbone {path}: the checkpoint has no keypoint detector")
    for net in nets:
        want, have = net.config.backbone, ckpt.detector_config.backbone
        if (want.name, want.width) != (have.name, have.width):
            raise ValueError(
                f"--init-backbone {path}: its detector has backbone {have.name} x{have.width}, "
                f"the regressor {want.name} x{want.width}; they must match"
            )
        prefix = "backbone."
        state = {k[len(prefix):]: v for k, v in ckpt.detector.items() if k.startswith(prefix)}
        net.backbone.load_state_dict({k: v.float() for k, v in state.items()})
    log.info("backbones initialised from the keypoint detector of %s", path)


def run_pretrain(
    config: PretrainConfig, resume: bool = False, body: BodyModel | None = None
) -> TrainResult:
    """Pre-train per `config` (DDP when launched by torchrun); returns the final checkpoint."""
    from model.body import load_body_model

    ctx: DistContext = init_distributed(config.loop.device)
    try:
        torch.manual_seed(config.loop.seed)
        dataset = open_dataset(list(config.data))
        log.info("pre-training on %d samples from %s", len(dataset), ", ".join(config.data))
        body = (body if body is not None else load_body_model()).to(ctx.device)
        task = PretrainTask(config, body)
        return train(
            task, dataset, config.loop, config.optim, config.out_dir, ctx, config_dict(config), resume
        )
    finally:
        shutdown(ctx)
