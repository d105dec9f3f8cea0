"""Stage "fit": the TTO schedule a job asks for (`tto_config`), and `model.tto.fit` of f_w
in PyTorch, in the checkpoint's scope, from the ONNX features (`Fitter`): one fit per
distinct schedule over the people of every job that shares it; one progress call per step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from model.body import BodyModel
from model.config import TTOConfig, TTORuntime
from model.outputs import FitResult, RegressorOutput
from service.contract import TTOOptions
from worker.pipeline import PermanentJobError, ProgressFn
from worker.stages.people import FIT_FORMAT, Crops


def tto_config(checkpoint: Any, tto: TTOOptions) -> TTOConfig:
    """The checkpoint's TTO schedule with the request's steps; refuses another scope (the
    scope is the model's: it was meta-trained for it)."""
    if tto.scope is not None and tto.scope != checkpoint.tto_scope:
        raise PermanentJobError(
            f"tto.scope {tto.scope!r} was asked for, but this model was meta-trained for the "
            f"{checkpoint.tto_scope!r} scope and the two must match; omit tto.scope or "
            f"send {checkpoint.tto_scope!r}"
        )
    # Not asked for: the schedule the model was meta-trained with.
    steps = checkpoint.tto.steps if tto.steps is None else tto.steps
    config: TTOConfig = replace(checkpoint.tto, steps=steps)
    return config


def wants_fit(config: TTOConfig, keypoints: np.ndarray) -> bool:
    """Whether a job's people (keypoints (B, 17, 3)) get a TTO at all."""
    return config.steps > 0 and bool((keypoints[..., 2] > 0).any())


@dataclass(frozen=True)
class FitJob:
    """What the fit needs of one job: its schedule, crops, keypoints (B, 17, 3), progress
    and its rows `span` in the batch's features."""

    config: TTOConfig
    crops: Crops
    keypoints: np.ndarray
    progress: ProgressFn
    span: slice


@dataclass(frozen=True)
class Fitter:
    """f_w's PyTorch copy, the body model, the device the TTO runs on and how (threads,
    compiled steps: the worker's settings)."""

    f_w: Any
    body: BodyModel
    device: torch.device
    runtime: TTORuntime = TTORuntime()

    def jobs(
        self, jobs: Sequence[FitJob], features: np.ndarray, aux: RegressorOutput | None
    ) -> list[FitResult | None]:
        """Per job, its people's fit (None: no TTO). features (N, F) and aux: the batch's."""
        fits: list[FitResult | None] = [None] * len(jobs)
        # One fit per schedule: jobs may ask for different step counts.
        groups: dict[TTOConfig, list[int]] = {}
        for k, job in enumerate(jobs):
            if wants_fit(job.config, job.keypoints):
                groups.setdefault(job.config, []).append(k)
        for config, members in groups.items():
            rows = np.concatenate(
                [np.arange(jobs[k].span.start, jobs[k].span.stop) for k in members]
            )
            fit = self.people(
                Crops.cat([jobs[k].crops for k in members]),
                features[rows],
                np.concatenate([jobs[k].keypoints for k in members]),
                aux.select(torch.as_tensor(rows)) if aux is not None else None,
                config,
                _fan_out([jobs[k].progress for k in members]),
            )
            at = 0
            for k in members:
                size = jobs[k].span.stop - jobs[k].span.start
                fits[k] = fit.select(slice(at, at + size)) if fit is not None else None
                at += size
        return fits

    def people(
        self,
        crops: Crops,
        features: np.ndarray,
        keypoints: np.ndarray,
        aux: RegressorOutput | None,
        config: TTOConfig,
        progress: ProgressFn,
    ) -> FitResult | None:
        """`model.tto.fit` for everyone with a confident keypoint; None when no TTO runs."""
        from model.backbones import normalize_crops
        from model.tto import TTOInputs, fit

        if not wants_fit(config, keypoints):
            return None
        dev = self.device
        images = None
        if config.scope == "full":
            images = torch.from_numpy(normalize_crops(crops.images)).to(dev)
        inputs = TTOInputs(
            keypoints=torch.from_numpy(keypoints).to(dev),
            crop=crops.crop.to(dev),
            keypoint_format=FIT_FORMAT,
            images=images,
            features=torch.from_numpy(features).to(dev),
        )
        total = 1 + config.steps
        progress("fit", 0, total)
        try:
            result = fit(
                self.f_w,
                inputs,
                self.body,
                config,
                None if aux is None else aux.to(dev),
                runtime=self.runtime,
                on_step=lambda step, n: progress("fit", step, n),
            )
        except ValueError as exc:  # bad keypoints or boxes that got past the API
            raise PermanentJobError(f"the fit cannot use this input: {exc}") from exc
        # Results, meshes and JSON are built on the CPU.
        return replace(result, initial=result.initial.to("cpu"), final=result.final.to("cpu"))


def _fan_out(progress: Sequence[ProgressFn]) -> ProgressFn:
    def each(stage: str, step: int, total: int) -> None:
        for p in progress:
            p(stage, step, total)

    return each
