"""Meta-training (ARCHITECTURE §3): TTO inside the training loop, with dual networks.

Per batch, from the pre-trained (or current) weights w of f_w and u of f_u:

1. pseudo target: f_u(x) in eval mode, detached (what f_u gives at test time);
2. inner step: w' = w - alpha * grad_w L_test-u(f_w(x), f_u(x), kp2d), through the same
   `model.tto_step.inner_step` the test-time TTO runs (per sample under vmap, or the batch as
   one task; first-order by default, second-order optionally);
3. outer losses: L_train(f_w'(x), gt) for w (its gradient reaches w through w'), and
   L_train(f_u(x), gt) for u; one backward for both, the loop then updates w and u.

f_w runs in eval mode throughout (BatchNorm statistics and dropout frozen), as the TTO it
is trained for does; f_u trains in train mode, as in pre-training. The TTO scope ("head":
only the regressor head adapts; "full": every weight) is recorded in the checkpoint, with
alpha as its step-0 learning rate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from model import tto_step
from model.body import BodyModel
from model.checkpoint import Checkpoint, checkpoint_from_models, load_checkpoint
from model.config import LossWeights, TTOConfig
from model.keypoint_detector import KeypointDetector
from model.losses import LossTerms, TrainTargets
from model.outputs import BodyOutput, RegressorOutput
from model.regressor import Regressor
from training.batches import batch_crop, network_input, train_targets
from training.config import MetaConfig
from training.datasets import HMRBatch
from training.distributed import init_distributed, shutdown
from training.features import open_dataset
from training.keypoint_noise import detector_noise
from training.pretrain import as_float32, autocast, forward, supervised_loss, term_scalars
from training.trainer import TrainResult, config_dict, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InnerTask:
    """What the inner step adapts, and on what.

    module: f_w's head ("head" scope) or f_w ("full"). params: the live weights the step
    starts from (per sample: expanded to (B, ...) views of them). inner_args: the inputs
    the inner loss sees; outer_args: the same, still attached to the backbone so that the
    outer loss also trains it in the "head" scope.
    """

    module: nn.Module
    params: dict[str, Tensor]
    inner_args: tuple[Tensor, ...]
    outer_args: tuple[Tensor, ...]


@dataclass(frozen=True)
class MetaStep:
    """One meta step's losses: inner (L_test-u at w), outer (L_train at w'), pre_adapt
    (L_train at w, for logging), aux (L_train of f_u, None without f_u)."""

    inner: tto_step.StepLoss
    outer: LossTerms
    pre_adapt: LossTerms
    aux: LossTerms | None


def pseudo_target(
    f_u: Regressor, batch: HMRBatch, body: BodyModel, weights: LossWeights
) -> tuple[RegressorOutput, BodyOutput]:
    """f_u's test-time prediction (eval mode, no grad) and its posed body (B people)."""
    was_training = f_u.training
    f_u.eval()
    with torch.no_grad():
        aux = forward(f_u, batch)
        aux_body = body(aux.params) if weights.vertices != 0 else body.keypoints_only(aux.params)
    f_u.train(was_training)
    return aux, aux_body


def inner_task(f_w: Regressor, batch: HMRBatch, config: MetaConfig) -> InnerTask:
    """The module, starting weights and inputs of the inner step for `config.scope`."""
    images = network_input(batch.image, f_w.config.crop_hw)
    if config.scope == "head":
        with autocast(images.device, config.loop.amp):
            features = f_w.backbone(images).float()
        module: nn.Module = f_w.head
        # First-order: the inner gradient is a constant, so it need not reach the backbone.
        inner_x = features.detach() if config.first_order else features
        inner_args, outer_args = (inner_x, batch.bbox_info), (features, batch.bbox_info)
    else:
        module = f_w
        inner_args = outer_args = (images, batch.bbox_info)
    params: dict[str, Tensor] = dict(module.named_parameters())
    if config.task == "sample":
        b = batch.batch_size
        params = {n: p.expand(b, *p.shape) for n, p in params.items()}
    return InnerTask(module, params, inner_args, outer_args)


def inner_keypoints(batch: HMRBatch, noisy: bool) -> Tensor:
    """(B, 17, 3) the 2D keypoints the inner step fits: ground truth, or with test-time noise."""
    return detector_noise(batch.keypoints2d, batch.box_size) if noisy else batch.keypoints2d


def adapt(
    task: InnerTask,
    batch: HMRBatch,
    body: BodyModel,
    config: MetaConfig,
    aux: tuple[RegressorOutput, BodyOutput] | None,
) -> tuple[dict[str, Tensor], tto_step.StepLoss]:
    """The inner step: (w', L_test-u at w) via `model.tto_step.inner_step`."""
    step_batch = tto_step.StepBatch(
        task.inner_args,
        inner_keypoints(batch, config.keypoint_noise),
        batch_crop(batch),
        "coco17",
        *(aux if aux is not None else (None, None)),
    )
    return tto_step.inner_step(
        task.module,
        task.params,
        step_batch,
        body,
        lr=config.inner_lr,
        weights=config.loss_weights,
        # As the test-time step 0: L_test-u with f_u, the plain 2D loss without it.
        objective="test_u" if aux is not None else "2d",
        per_sample=config.task == "sample",
        first_order=config.first_order,
    )


def outer_loss(
    task: InnerTask,
    adapted: dict[str, Tensor],
    targets: TrainTargets,
    body: BodyModel,
    config: MetaConfig,
) -> LossTerms:
    """L_train of the adapted network's prediction f_w'(x)."""
    pred = tto_step.predict(task.module, adapted, task.outer_args, per_sample=config.task == "sample")
    return supervised_loss(as_float32(pred), targets, body, config.loss_weights)


def meta_step(
    f_w: Regressor, f_u: Regressor | None, batch: HMRBatch, body: BodyModel, config: MetaConfig
) -> MetaStep:
    """Forward and losses of one meta step (no backward)."""
    weights = config.loss_weights
    targets = train_targets(batch, body, with_vertices=weights.vertices != 0)
    aux = pseudo_target(f_u, batch, body, weights) if f_u is not None else None
    task = inner_task(f_w, batch, config)
    adapted, inner = adapt(task, batch, body, config, aux)
    outer = outer_loss(task, adapted, targets, body, config)
    with torch.no_grad():
        pre = supervised_loss(as_float32(inner.pred.detach()), targets, body, weights)
    aux_terms = None
    if f_u is not None:
        aux_terms = supervised_loss(forward(f_u, batch, config.loop.amp), targets, body, weights)
    return MetaStep(inner, outer, pre, aux_terms)


class MetaTask:
    """Meta-training of (w, u) from a pre-trained checkpoint."""

    stage = "meta"

    def __init__(self, config: MetaConfig, init: Checkpoint, body: BodyModel) -> None:
        self.config, self.body, self.init = config, body, init
        self.f_w = init.build_f_w()
        self.f_u = init.build_f_u() if config.use_aux else None
        if config.use_aux and self.f_u is None:
            raise ValueError(
                f"{config.init_checkpoint} has no auxiliary network f_u; pre-train with f_u "
                "or meta-train without it (--no-aux)"
            )
        self.detector: KeypointDetector | None = init.build_detector()

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"f_w": self.f_w}
        if self.f_u is not None:
            mods["f_u"] = self.f_u
        return mods

    def param_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = [{"params": list(self.f_w.parameters())}]
        if self.f_u is not None:
            lr = self.config.aux_lr if self.config.aux_lr is not None else self.config.optim.lr
            groups.append({"params": list(self.f_u.parameters()), "lr": lr})
        return groups

    def train_mode(self) -> None:
        self.f_w.eval()  # frozen BatchNorm/dropout, as in the TTO
        if self.f_u is not None:
            self.f_u.train()

    def step(self, batch: HMRBatch) -> dict[str, float]:
        out = meta_step(self.f_w, self.f_u, batch, self.body, self.config)
        loss = out.outer.total if out.aux is None else out.outer.total + out.aux.total
        loss.backward()
        scalars = {"loss": float(out.outer.total.detach())}
        scalars["inner/loss"] = float(out.inner.per_sample.detach().mean())
        scalars |= term_scalars("outer", out.outer) | term_scalars("pre_adapt", out.pre_adapt)
        if out.aux is not None:
            scalars |= term_scalars("f_u", out.aux)
        return scalars

    def tto_config(self) -> TTOConfig:
        c = self.config
        return replace(
            self.init.tto, scope=c.scope, sgd_lr=c.inner_lr, use_aux=c.use_aux,
            loss_weights=c.loss_weights,
        )

    def checkpoint(self, metrics: dict[str, float], extra: dict[str, Any]) -> Checkpoint:
        kind = "meta-dual" if self.f_u is not None else "meta"
        return checkpoint_from_models(
            self.f_w,
            self.tto_config(),
            self.init.body_model_id,
            f_u=self.f_u,
            detector=self.detector,
            model_version=f"{kind}-{extra['step']}",
            metrics=metrics,
            extra={**extra, "method": kind, "init_checkpoint": self.config.init_checkpoint},
        )

    def load(self, ckpt: Checkpoint) -> None:
        self.f_w.load_state_dict(ckpt.f_w)
        if self.f_u is not None and ckpt.f_u is not None:
            self.f_u.load_state_dict(ckpt.f_u)


def run_meta(config: MetaConfig, resume: bool = False, body: BodyModel | None = None) -> TrainResult:
    """Meta-train per `config` (DDP when launched by torchrun); returns the final checkpoint."""
    from model.body import load_body_model

    ctx = init_distributed(config.loop.device)
    try:
        torch.manual_seed(config.loop.seed)
        init = load_checkpoint(config.init_checkpoint)
        body = (body if body is not None else load_body_model()).to(ctx.device)
        if init.body_model_id != body.id:
            log.warning(
                "%s was trained with body model %s, this run uses %s",
                config.init_checkpoint, init.body_model_id, body.id,
            )
        dataset = open_dataset(list(config.data))
        log.info(
            "meta-training (%s scope, %s, %s-order, alpha=%g) on %d samples",
            config.scope, "per sample" if config.task == "sample" else "batch as one task",
            "first" if config.first_order else "second", config.inner_lr, len(dataset),
        )
        task = MetaTask(config, init, body)
        return train(
            task, dataset, config.loop, config.optim, config.out_dir, ctx, config_dict(config), resume
        )
    finally:
        shutdown(ctx)
