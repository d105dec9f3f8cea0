"""The inference pipeline interface the task runs, its errors, and the diagnostics pipeline.

`Pipeline.run(image, options, progress)` turns one decoded image and the job's typed options
(`service.contract.RecoverOptions`) into the §5 result (ARCHITECTURE.md) plus optional files.
It must call `progress` at each stage and TTO step and let its exceptions through: that is
how a canceled job stops.

Two pipelines, built by name in `worker.factory`: "onnx" (the model: ONNX Runtime networks +
PyTorch TTO, `worker.inference`), and "echo" (here), a diagnostics pipeline with no model
that answers with the image size and the people it was given, so the queue, the job store
and the HTTP path can be checked on any machine.

This module is the bottom of the worker: it imports no other worker module but the config.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.contract import PersonIn, RecoverOptions

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PipelineResult:
    result: dict[str, Any]  # the §5 "Result" object as JSON (`RecoverResult.to_job()`)
    files: Mapping[str, bytes] = field(default_factory=dict)  # mesh.obj, mesh.glb, overlay.png
    tto_steps: tuple[int, ...] = ()  # steps run per person, for /metrics


class Pipeline(Protocol):
    name: str

    def run(
        self, image: np.ndarray, options: RecoverOptions, progress: ProgressFn
    ) -> PipelineResult:
        """image (H, W, 3) uint8 RGB, upright; options: the job's, parsed from its record."""
        ...

    def run_batch(
        self,
        images: Sequence[np.ndarray],
        options_list: Sequence[RecoverOptions],
        progress_list: Sequence[ProgressFn],
        whole_image: bool = True,
    ) -> list[PipelineResult | Exception]:
        """Several jobs at once (micro-batching): per job, its result or the exception that
        job alone raised, so one bad input fails only its job. Results equal `run`'s, with
        `timings_ms.batch_size` (the jobs that ran together) when more than one did.
        whole_image=False: an image where the person detector finds nobody (and the job
        names no people) gets `NoPeopleFound` instead of the whole image as one person."""
        ...


class PipelineUnavailable(RuntimeError):
    """The configured pipeline cannot be built on this installation."""


class NoPeopleFound(Exception):
    """`Pipeline.run_batch(whole_image=False)`: the detector found nobody in this image."""


class PermanentJobError(Exception):
    """This input cannot be processed (e.g. the scope asked for does not match the model):
    the job fails with this message and is not retried."""


class TransientJobError(Exception):
    """A passing problem (e.g. out of GPU memory): the job is retried later."""


class EchoPipeline:
    """Diagnostics only, not a model: reports the image size, its mean colour and the people
    it was given. `delay_s` makes it take time (with progress), to test cancel and crashes."""

    name = "echo"

    def __init__(self, delay_s: float = 0.0, steps: int = 10) -> None:
        self.delay_s = delay_s
        self.steps = steps

    def run(
        self, image: np.ndarray, options: RecoverOptions, progress: ProgressFn
    ) -> PipelineResult:
        start = time.perf_counter()
        height, width = image.shape[:2]
        for step in range(self.steps):
            progress("echo", step, self.steps)
            time.sleep(self.delay_s / self.steps)
        progress("echo", self.steps, self.steps)
        focal = options.focal_length or math.hypot(width, height)
        result = {
            "model": {
                "name": "echo",
                "version": "diagnostics",
                "body_model": None,
                "tto_scope": None,
            },
            "image": {"width": width, "height": height, "focal_length": focal},
            "people": [
                {
                    "bbox": list(p.bbox) if p.bbox is not None else None,
                    "keypoints_2d": [list(k) for k in p.keypoints.points] if p.keypoints else None,
                    "keypoint_source": "request" if p.keypoints else None,
                }
                for p in options.people or [PersonIn(bbox=(0.0, 0.0, width, height))]
            ],
            "diagnostics": {"mean_rgb": [float(v) for v in image.reshape(-1, 3).mean(axis=0)]},
            "timings_ms": {"total": (time.perf_counter() - start) * 1000.0},
        }
        return PipelineResult(result=result, tto_steps=tuple(0 for _ in result["people"]))

    def run_batch(
        self,
        images: Sequence[np.ndarray],
        options_list: Sequence[RecoverOptions],
        progress_list: Sequence[ProgressFn],
        whole_image: bool = True,
    ) -> list[PipelineResult | Exception]:
        """One job after another (nothing here gains from a batch; no detector, so
        whole_image changes nothing)."""
        return run_one_by_one(self, images, options_list, progress_list)


def run_one_by_one(
    pipeline: Pipeline,
    images: Sequence[np.ndarray],
    options_list: Sequence[RecoverOptions],
    progress_list: Sequence[ProgressFn],
) -> list[PipelineResult | Exception]:
    """`Pipeline.run_batch` for a pipeline without a batched path: `run` per job, each job's
    exception kept as its outcome, `timings_ms.batch_size` set as a batch would."""
    out: list[PipelineResult | Exception] = []
    for image, options, progress in zip(images, options_list, progress_list, strict=True):
        try:
            res = pipeline.run(image, options, progress)
        except Exception as exc:
            out.append(exc)
            continue
        if len(images) > 1:
            res.result["timings_ms"]["batch_size"] = len(images)
        out.append(res)
    return out
