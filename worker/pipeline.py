"""The inference pipeline interface the task runs, and the factory that builds one.

`Pipeline.run(image, options, progress)` turns one decoded image and the job's options into
the §5 result (ARCHITECTURE.md) plus optional files. It must call `progress` at each stage
and TTO step and let its exceptions through: that is how a canceled job stops.

Two pipelines: "onnx" (the model: ONNX Runtime networks + PyTorch TTO, built by
`worker/inference.py`'s `build_pipeline(settings)`), and "echo", a diagnostics pipeline with
no model that answers with the image size and the people it was given, so the queue, the job
store and the HTTP path can be checked on any machine.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from worker.config import WorkerSettings

ProgressFn = Callable[[str, int, int], None]
PIPELINES = ("onnx", "echo")


@dataclass(frozen=True)
class PipelineResult:
    result: dict[str, Any]  # the §5 "Result" object
    files: Mapping[str, bytes] = field(default_factory=dict)  # mesh.obj, mesh.glb, overlay.png
    tto_steps: tuple[int, ...] = ()  # steps run per person, for /metrics


class Pipeline(Protocol):
    name: str

    def run(
        self, image: np.ndarray, options: Mapping[str, Any], progress: ProgressFn
    ) -> PipelineResult:
        """image (H, W, 3) uint8 RGB, upright; options as stored with the job."""
        ...

    def run_batch(
        self,
        images: Sequence[np.ndarray],
        options_list: Sequence[Mapping[str, Any]],
        progress_list: Sequence[ProgressFn],
    ) -> list[PipelineResult | Exception]:
        """Several jobs at once (micro-batching): per job, its result or the exception that
        job alone raised, so one bad input fails only its job. Results equal `run`'s, with
        `timings_ms.batch_size` (the jobs that ran together) when more than one did."""
        ...


class PipelineUnavailable(RuntimeError):
    """The configured pipeline cannot be built on this installation."""


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
        self, image: np.ndarray, options: Mapping[str, Any], progress: ProgressFn
    ) -> PipelineResult:
        start = time.perf_counter()
        height, width = image.shape[:2]
        for step in range(self.steps):
            progress("echo", step, self.steps)
            time.sleep(self.delay_s / self.steps)
        progress("echo", self.steps, self.steps)
        people = options.get("people") or [{"bbox": [0.0, 0.0, float(width), float(height)]}]
        focal = options.get("focal_length") or math.hypot(width, height)
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
                    "bbox": p.get("bbox"),
                    "keypoints_2d": (p.get("keypoints") or {}).get("points"),
                    "keypoint_source": "request" if p.get("keypoints") else None,
                }
                for p in people
            ],
            "diagnostics": {"mean_rgb": [float(v) for v in image.reshape(-1, 3).mean(axis=0)]},
            "timings_ms": {"total": (time.perf_counter() - start) * 1000.0},
        }
        return PipelineResult(result=result, tto_steps=tuple(0 for _ in people))

    def run_batch(
        self,
        images: Sequence[np.ndarray],
        options_list: Sequence[Mapping[str, Any]],
        progress_list: Sequence[ProgressFn],
    ) -> list[PipelineResult | Exception]:
        """One job after another (nothing here gains from a batch)."""
        return run_one_by_one(self, images, options_list, progress_list)


def run_one_by_one(
    pipeline: Pipeline,
    images: Sequence[np.ndarray],
    options_list: Sequence[Mapping[str, Any]],
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


def _inference_module() -> Any:
    try:
        return importlib.import_module("worker.inference")
    except ModuleNotFoundError as exc:
        if exc.name != "worker.inference":
            raise PipelineUnavailable(
                f"the model pipeline needs {exc.name!r}: install the worker extra "
                "(`make install`, or `pip install .[worker]`)"
            ) from exc
        raise PipelineUnavailable(
            "this build has no model pipeline yet (worker/inference.py). To check the queue "
            "without a model, set METAHMR_PIPELINE=echo"
        ) from exc


def check_pipeline(settings: WorkerSettings) -> str | None:
    """Why the configured pipeline cannot run here, or None. Cheap: loads no model."""
    if settings.pipeline not in PIPELINES:
        return f"unknown pipeline {settings.pipeline!r}; valid: {', '.join(PIPELINES)}"
    if settings.pipeline == "echo":
        return None
    try:
        module = _inference_module()
    except PipelineUnavailable as exc:
        return str(exc)
    check = getattr(module, "check_pipeline", None)
    return check(settings) if check is not None else None


def load_pipeline(settings: WorkerSettings) -> Pipeline:
    """Build the pipeline named by `settings.pipeline` (heavy: loads the model)."""
    if settings.pipeline == "echo":
        return EchoPipeline(delay_s=settings.echo_delay_s)
    if settings.pipeline == "onnx":
        pipeline: Pipeline = _inference_module().build_pipeline(settings)
        return pipeline
    raise ValueError(f"unknown pipeline {settings.pipeline!r}; valid: {', '.join(PIPELINES)}")
