"""The pipeline factory: names, the diagnostics pipeline, and a clear error without a model."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from service.contract import RecoverOptions
from worker.config import WorkerSettings
from worker.factory import check_pipeline, load_pipeline
from worker.pipeline import EchoPipeline, PipelineUnavailable


def test_echo_pipeline_reports_image_and_people() -> None:
    image = np.zeros((30, 40, 3), np.uint8)
    image[..., 1] = 100
    steps: list[tuple[str, int, int]] = []
    points = [[1.0, 1.0, 1.0]] * 17
    options = RecoverOptions.model_validate(
        {"people": [{"bbox": [1, 2, 3, 4], "keypoints": {"points": points}}]}
    )
    out = EchoPipeline(steps=3).run(image, options, lambda *p: steps.append(p))
    assert steps == [("echo", 0, 3), ("echo", 1, 3), ("echo", 2, 3), ("echo", 3, 3)]
    assert out.result["image"] == {"width": 40, "height": 30, "focal_length": 50.0}
    assert out.result["people"][0]["bbox"] == [1, 2, 3, 4]
    assert out.result["people"][0]["keypoint_source"] == "request"
    assert out.result["people"][0]["keypoints_2d"] == points
    assert out.result["diagnostics"]["mean_rgb"] == [0.0, 100.0, 0.0]
    assert out.files == {} and out.tto_steps == (0,)


def test_echo_is_loaded_by_name() -> None:
    settings = WorkerSettings(pipeline="echo", echo_delay_s=0.5)
    pipeline = load_pipeline(settings)
    assert isinstance(pipeline, EchoPipeline) and pipeline.delay_s == 0.5
    assert check_pipeline(settings) is None


def test_without_the_worker_extra_the_model_pipeline_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker

    monkeypatch.delitem(sys.modules, "worker.inference", raising=False)
    monkeypatch.delattr(worker, "inference", raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if it were not installed
    settings = WorkerSettings(pipeline="onnx")
    problem = check_pipeline(settings)
    assert problem is not None and "'torch'" in problem and "worker extra" in problem
    with pytest.raises(PipelineUnavailable, match="worker extra"):
        load_pipeline(settings)


def test_unknown_pipeline_name_is_refused_at_settings() -> None:
    with pytest.raises(ValueError, match="onnx"):
        WorkerSettings(pipeline="magic")  # type: ignore[arg-type]


def test_worker_settings_check_time_limits() -> None:
    with pytest.raises(ValueError, match="HARD_TIME_LIMIT"):
        WorkerSettings(job_soft_time_limit_s=100, job_hard_time_limit_s=50)
    with pytest.raises(ValueError, match="HEARTBEAT_TTL"):
        WorkerSettings(heartbeat_interval_s=5, heartbeat_ttl_s=2)
