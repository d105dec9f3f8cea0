"""The training loop every stage shares: it only loops, logs and checkpoints.

A stage (pre-training, meta-training, the keypoint detector) is a `Task`: it owns the
networks and its step function (forward, loss, backward). The loop owns the rest: the
data order, AdamW with a warm-up + cosine schedule, gradient averaging across DDP ranks,
clipping, logging, checkpoints every N steps and at the end, and an exact `--resume`.

Exact resume: the data a step sees depends only on (seed, step), never on how the run got
there. `StepBatchSampler` walks an endless stream of per-epoch permutations, and each item's
augmentation is seeded by (seed, epoch, index) (`SeededView`), so a resumed run feeds the
same crops in the same order; the optimizer, scheduler and RNG states come from the
training-state file (`training.checkpoints`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from model.checkpoint import Checkpoint, save_checkpoint
from model.config import to_dict
from training.augment import NO_AUGMENT, AugmentConfig, augment_and_crop, sample_params
from training.checkpoints import (
    FINAL,
    LAST,
    TrainingState,
    config_differences,
    load_run_checkpoint,
    rng_state,
    save_run_checkpoint,
    set_rng_state,
)
from training.config import LoopConfig, OptimConfig
from training.datasets import HMRBatch, HMRDataset, HMRSample, Skipped, collate_samples, to_sample
from training.distributed import (
    DistContext,
    all_reduce_gradients,
    average_buffers,
    broadcast_parameters,
    mean_across_ranks,
)
from training.run_log import RunLog

if TYPE_CHECKING:
    from training.features import FeatureDataset

# What a training run reads: images (augmented here) or a feature cache (augmented when written).
TrainData: TypeAlias = "HMRDataset | FeatureDataset"

log = logging.getLogger(__name__)


class Task(Protocol):
    """One training stage, as the loop sees it."""

    stage: str

    def modules(self) -> dict[str, nn.Module]:
        """The networks being trained (moved to the device and kept identical across ranks
        by the loop; the body model is not one of them)."""
        ...

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups (a group may carry its own "lr")."""
        ...

    def train_mode(self) -> None:
        """Put the networks in the modes the step expects."""
        ...

    def step(self, batch: HMRBatch) -> dict[str, float]:
        """Forward, loss and backward for one batch; returns scalars to log."""
        ...

    def checkpoint(self, metrics: dict[str, float], extra: dict[str, Any]) -> Checkpoint:
        """The networks as a model checkpoint."""
        ...

    def load(self, ckpt: Checkpoint) -> None:
        """Take the weights of a checkpoint written by `checkpoint` (resume)."""
        ...


@dataclass(frozen=True)
class TrainResult:
    """checkpoint: path of final.pt. steps: total steps; resumed_from: first step of this
    run. history: the logged rows (main rank; steps of this run only)."""

    checkpoint: Path
    steps: int
    resumed_from: int
    history: list[dict[str, float]]


# --- data order ------------------------------------------------------------------------------


class StepBatchSampler:
    """Batches of (index, epoch) keys, a pure function of (seed, step, rank).

    The stream is the concatenation of seeded permutations of range(n), one per epoch; step
    s takes the next batch_size * world_size positions, rank r the r-th batch_size of them.
    Works for data sets smaller than a batch (the stream wraps into the next epoch).
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0
    ) -> None:
        if n < 1:
            raise ValueError("the training data set is empty")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.start = rank, world, start
        self._perm_epoch = -1
        self._perm = np.arange(n)

    def _at(self, position: int) -> tuple[int, int]:
        epoch = position // self.n
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return int(self._perm[position % self.n]), epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start
        while True:
            first = (step * self.world + self.rank) * self.batch_size
            yield [self._at(first + j) for j in range(self.batch_size)]
            step += 1


class SeededView(Dataset):
    """`HMRDataset` items keyed by (index, epoch), augmentation seeded by (seed, epoch, index).

    (HMRDataset's own seeding mixes in the worker's torch seed, which differs between a run
    and its resumption; this view does not.)
    """

    def __init__(self, dataset: HMRDataset, augment: AugmentConfig | None, seed: int) -> None:
        self.dataset, self.augment, self.seed = dataset, augment, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> HMRSample | Skipped:
        index, epoch = key
        try:
            person = self.dataset.person(index)
        except (OSError, ValueError, SyntaxError) as exc:  # unreadable image: drop, not raise
            log.warning("skipping unreadable image of sample %d: %s", index, exc)
            return Skipped(str(index), str(exc))
        rng = np.random.default_rng([self.seed, epoch, index])
        params = NO_AUGMENT if self.augment is None else sample_params(rng, self.augment)
        crop, person = augment_and_crop(rng, person, params)
        return to_sample(crop, person, index)


def total_steps(loop: LoopConfig, n: int, world: int) -> int:
    """loop.steps, or loop.epochs passes over n samples at the global batch size."""
    if loop.epochs is None:
        return loop.steps
    return max(1, math.ceil(loop.epochs * n / (loop.batch_size * world)))


def make_loader(
    dataset: TrainData, loop: LoopConfig, ctx: DistContext, start: int
) -> Iterator[HMRBatch]:
    augment = AugmentConfig() if loop.augment else None
    sampler = StepBatchSampler(
        len(dataset), loop.batch_size, loop.seed, ctx.rank, ctx.world_size, start
    )
    from training.features import FeatureDataset

    # A feature cache's views were augmented when it was written; it is keyed the same way.
    view = dataset if isinstance(dataset, FeatureDataset) else SeededView(dataset, augment, loop.seed)
    loader = DataLoader(
        view,
        batch_sampler=sampler,
        num_workers=loop.workers,
        collate_fn=collate_samples,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=loop.workers > 0,
        # Its own generator: creating the iterator must not draw from the global RNG,
        # whose state (dropout) is part of what a resume restores.
        generator=torch.Generator().manual_seed(loop.seed),
    )
    return iter(loader)


# --- optimisation ----------------------------------------------------------------------------


def lr_factor(step: int, optim: OptimConfig, total: int) -> float:
    """Multiplier of the peak lr at `step`: linear warm-up, then cosine (or constant)."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    span = max(1, total - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(
    task: Task, optim: OptimConfig, total: int, device: torch.device
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    groups = [{**g, "params": list(g["params"])} for g in task.param_groups()]
    optimizer = torch.optim.AdamW(
        groups,
        lr=optim.lr,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, optim, total)
    )
    return optimizer, scheduler


def _params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def update(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    optim: OptimConfig,
    ctx: DistContext,
) -> float:
    """Average gradients across ranks, clip, step. Returns the pre-clip gradient norm."""
    params = _params(optimizer)
    all_reduce_gradients(params, ctx)
    with_grad = [p for p in params if p.grad is not None]
    max_norm = optim.grad_clip if optim.grad_clip is not None else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm) if with_grad else torch.zeros(())
    optimizer.step()
    scheduler.step()
    return float(norm)


# --- the loop --------------------------------------------------------------------------------


def train(
    task: Task,
    dataset: TrainData,
    loop: LoopConfig,
    optim: OptimConfig,
    out_dir: str | Path,
    ctx: DistContext,
    config: dict[str, Any],
    resume: bool = False,
) -> TrainResult:
    """Run `task` for the configured steps (from the last checkpoint when resume)."""
    out = Path(out_dir)
    total = total_steps(loop, len(dataset), ctx.world_size)
    for module in task.modules().values():
        module.to(ctx.device)
    optimizer, scheduler = build_optimizer(task, optim, total, ctx.device)
    start = _resume(task, optimizer, scheduler, out, config) if resume else 0
    broadcast_parameters(task.modules().values(), ctx)
    if start >= total:
        log.info("%s: already at step %d of %d, nothing to do", task.stage, start, total)
        return TrainResult(out / FINAL, total, start, [])
    batches = make_loader(dataset, loop, ctx, start)
    run_log = RunLog(out, enabled=ctx.is_main)
    history: list[dict[str, float]] = []
    bar = _progress(loop, ctx, start, total, task.stage)
    task.train_mode()
    last: dict[str, float] = {}
    for step in range(start, total):
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        if batch.batch_size > 0:
            scalars = task.step(batch.to(ctx.device))
        else:  # every image unreadable: no gradient here, but the ranks still meet in update
            log.warning("step %d: empty batch, no gradient from this process", step)
            # The same keys as the other ranks' (mean_across_ranks reduces one tensor).
            scalars = {k: float("nan") for k in last if k not in ("grad_norm", "lr")}
        scalars["grad_norm"] = update(optimizer, scheduler, optim, ctx)
        average_buffers(task.modules().values(), ctx)
        scalars["lr"] = float(scheduler.get_last_lr()[0])
        done = step + 1
        if done % loop.log_every == 0 or done == total or done == start + 1:
            last = mean_across_ranks(scalars, ctx)
            run_log.write(done, last)
            history.append({"step": float(done), **last})
            log.info("%s step %d/%d: %s", task.stage, done, total, _fmt(last))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{scalars.get('loss', float('nan')):.4f}")
        if done % loop.checkpoint_every == 0 and done < total:
            _save(task, optimizer, scheduler, out / LAST, done, total, last, config, ctx)
    if bar is not None:
        bar.close()
    run_log.close()
    _save(task, optimizer, scheduler, out / LAST, total, total, last, config, ctx)
    if ctx.is_main:
        save_checkpoint(task.checkpoint(last, _extra(task, total, config)), out / FINAL)
        log.info("%s finished: %s", task.stage, out / FINAL)
    return TrainResult(out / FINAL, total, start, history)


def _extra(task: Task, step: int, config: dict[str, Any]) -> dict[str, Any]:
    from training.checkpoints import git_commit

    return {"stage": task.stage, "step": step, "git_commit": git_commit(), "config": config}


def _save(
    task: Task,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    path: Path,
    step: int,
    total: int,
    metrics: dict[str, float],
    config: dict[str, Any],
    ctx: DistContext,
) -> None:
    if not ctx.is_main:
        return
    state = TrainingState(
        stage=task.stage,
        step=step,
        total_steps=total,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        rng=rng_state(),
        config=config,
    )
    save_run_checkpoint(task.checkpoint(metrics, _extra(task, step, config)), state, path)
    log.info("%s: checkpoint at step %d -> %s", task.stage, step, path)


def _resume(
    task: Task,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    out: Path,
    config: dict[str, Any],
) -> int:
    path = out / LAST
    if not path.is_file():
        log.info("%s: no checkpoint at %s, starting from step 0", task.stage, path)
        return 0
    ckpt, state = load_run_checkpoint(path)
    if state.stage != task.stage:
        raise ValueError(f"{path} is a {state.stage!r} checkpoint, not {task.stage!r}")
    for diff in config_differences(state.config, config):
        log.warning("resume: config changed since the checkpoint: %s", diff)
    task.load(ckpt)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    set_rng_state(state.rng)
    log.info("%s: resumed from %s at step %d", task.stage, path, state.step)
    return state.step


def _progress(loop: LoopConfig, ctx: DistContext, start: int, total: int, stage: str) -> Any:
    if not (loop.progress and ctx.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=stage, dynamic_ncols=True)


def _fmt(scalars: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in scalars.items())


def config_dict(config: Any) -> dict[str, Any]:
    """A stage config as builtins (what the state file and the checkpoint record)."""
    return to_dict(config)
