"""Which pipeline a worker runs: `check_pipeline` (cheap) and `load_pipeline` (heavy), by
the name in `settings.pipeline`.

The top of the worker's pipeline code: it imports `worker.inference` (the model, which
imports the stages, the runtime and `worker.pipeline`), never the other way round. The
import is inside the functions so that an echo worker needs neither torch nor onnxruntime.
"""

from __future__ import annotations

from types import ModuleType

from worker.config import WorkerSettings
from worker.pipeline import EchoPipeline, Pipeline, PipelineUnavailable

PIPELINES = ("onnx", "echo")


def _inference_module() -> ModuleType:
    try:
        from worker import inference
    except ModuleNotFoundError as exc:
        raise PipelineUnavailable(
            f"the model pipeline needs {exc.name!r}: install the worker extra "
            "(`make install`, or `pip install .[worker]`)"
        ) from exc
    return inference


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
    problem: str | None = module.check_pipeline(settings)
    return problem


def load_pipeline(settings: WorkerSettings) -> Pipeline:
    """Build the pipeline named by `settings.pipeline` (heavy: loads the model)."""
    if settings.pipeline == "echo":
        return EchoPipeline(delay_s=settings.echo_delay_s)
    if settings.pipeline == "onnx":
        pipeline: Pipeline = _inference_module().build_pipeline(settings)
        return pipeline
    raise ValueError(f"unknown pipeline {settings.pipeline!r}; valid: {', '.join(PIPELINES)}")
