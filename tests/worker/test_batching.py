"""Specification of micro-batching in the "onnx" pipeline: `OnnxPipeline.run_batch` runs
several jobs as one ONNX forward and one head-scope fit, and equals running them one by one;
a job with bad input, or whose progress stops it (canceled), fails alone."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from broker_checks import send_as_the_api
from PIL import Image

# The tiny exported model, its pipeline and the example person of the inference tests.
from test_inference import FAST, body, exported, person, pipeline  # noqa: F401

from service.contract import RecoverOptions
from service.jobs import JobCanceled, JobStatus, JobStore
from worker.config import WorkerSettings
from worker.context import WorkerContext
from worker.inference import OnnxPipeline
from worker.pipeline import EchoPipeline, PermanentJobError, PipelineResult
from worker.tasks import run_job


def _jobs(example: dict[str, Any]) -> list[dict[str, Any]]:
    """Four jobs unlike each other: keypoints and steps, box only, two people, no TTO."""
    kp = example["keypoints"]
    assert isinstance(kp, np.ndarray)
    shifted = kp.copy()
    shifted[:, :2] += 7.0
    return [
        {"people": [{"keypoints": {"format": "coco17", "points": kp.tolist()}}],
         "tto": {"steps": FAST.steps}, "return": ["joints3d"]},
        {"people": [{"bbox": example["bbox"].tolist()}]},
        {"people": [{"keypoints": {"format": "coco17", "points": kp.tolist()}},
                    {"keypoints": {"format": "coco17", "points": shifted.tolist()}}],
         "tto": {"steps": FAST.steps}, "focal_length": 900.0},
        {"people": [{"keypoints": {"format": "coco17", "points": kp.tolist()}}],
         "tto": {"steps": 0}},
    ]  # fmt: skip


def _typed(jobs: list[dict[str, Any]]) -> list[RecoverOptions]:
    """The options as the worker reads them from the job records."""
    return [RecoverOptions.model_validate(o) for o in jobs]


def _close(a: Any, b: Any, path: str = "") -> None:
    """Equal JSON, floats within 1e-5 (relative to their size above 1)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5), (path, a, b)
    else:
        assert a == b, path


def _without_timings(out: PipelineResult) -> dict[str, Any]:
    return {k: v for k, v in out.result.items() if k != "timings_ms"}


def test_run_batch_equals_running_the_jobs_one_by_one(
    pipeline: OnnxPipeline,  # noqa: F811
    person: dict[str, Any],  # noqa: F811
) -> None:
    jobs = _jobs(person)
    image = person["image"]
    images = [image, np.ascontiguousarray(image[:440, 16:]), image, image]  # sizes differ
    typed = _typed(jobs)
    alone = [pipeline.run(i, o, lambda *c: None) for i, o in zip(images, typed, strict=True)]
    calls: list[list[tuple[str, int, int]]] = [[] for _ in jobs]
    together = pipeline.run_batch(
        images, typed, [lambda *c, k=k: calls[k].append(c) for k in range(len(jobs))]
    )
    assert together[1].result["image"]["height"] == 440  # type: ignore[union-attr]
    for one, batched in zip(alone, together, strict=True):
        assert isinstance(batched, PipelineResult)
        _close(_without_timings(one), _without_timings(batched))
        assert batched.tto_steps == one.tto_steps
        assert batched.result["timings_ms"]["batch_size"] == len(jobs)
        assert "batch_size" not in one.result["timings_ms"]
    # Every job hears of every stage, and of each of its fit steps.
    for k, job in enumerate(jobs):
        stages = [c[0] for c in calls[k]]
        assert stages[:4] == ["detect", "detect", "regress", "regress"]
        steps = job.get("tto", {}).get("steps", FAST.steps)
        assert stages.count("fit") == (2 + steps if steps else 0)  # fit 0/total .. total


def test_a_job_with_bad_input_fails_alone(
    pipeline: OnnxPipeline,  # noqa: F811
    person: dict[str, Any],  # noqa: F811
) -> None:
    jobs = _jobs(person)[:2]
    # Two confident MediaPipe points (the mouth) that have no COCO-17 joint: the contract
    # sees two, the worker none to derive a box from.
    mouth_only = np.zeros((33, 3))
    mouth_only[9:11] = [[10.0, 10.0, 1.0], [20.0, 10.0, 1.0]]
    bad = {"people": [{"keypoints": {"format": "mediapipe33", "points": mouth_only.tolist()}}]}
    wrong_scope = {"tto": {"scope": "full"}}
    images = [person["image"]] * 4
    out = pipeline.run_batch(
        images, _typed([jobs[0], bad, wrong_scope, jobs[1]]), [lambda *c: None] * 4
    )
    assert isinstance(out[1], PermanentJobError) and "bbox" in str(out[1])
    assert isinstance(out[2], PermanentJobError) and "scope" in str(out[2])
    for k, job in ((0, jobs[0]), (3, jobs[1])):
        res = out[k]
        assert isinstance(res, PipelineResult)
        assert res.result["timings_ms"]["batch_size"] == 2
        (typed,) = _typed([job])
        _close(_without_timings(pipeline.run(person["image"], typed, lambda *c: None)),
               _without_timings(res))  # fmt: skip


def test_a_canceled_job_stops_alone_and_the_batch_finishes(
    pipeline: OnnxPipeline,  # noqa: F811
    person: dict[str, Any],  # noqa: F811
) -> None:
    jobs = _jobs(person)[:3]

    def canceled(stage: str, step: int, total: int) -> None:
        if stage == "fit" and step == 3:
            raise JobCanceled("job was canceled")

    progress = [lambda *c: None, canceled, lambda *c: None]
    out = pipeline.run_batch([person["image"]] * 3, _typed(jobs), progress)
    assert isinstance(out[1], JobCanceled)
    assert all(isinstance(out[k], PipelineResult) for k in (0, 2))


def test_echo_pipeline_batches_as_a_loop() -> None:
    echo = EchoPipeline(steps=2)
    images = [np.zeros((4, 6, 3), np.uint8), np.full((8, 2, 3), 255, np.uint8)]
    out = echo.run_batch(images, _typed([{}, {}]), [lambda *c: None] * 2)
    for image, res in zip(images, out, strict=True):
        assert isinstance(res, PipelineResult)
        assert res.result["image"]["height"] == image.shape[0]
        assert res.result["timings_ms"]["batch_size"] == 2


def test_recover_task_batches_onnx_jobs_and_a_bad_one_fails_alone(
    pipeline: OnnxPipeline,  # noqa: F811
    person: dict[str, Any],  # noqa: F811
    worker_settings: WorkerSettings,
    store: JobStore,
) -> None:
    buf = io.BytesIO()
    Image.fromarray(person["image"]).save(buf, "PNG")
    jobs = _jobs(person)[:2]
    bad = {"people": [{"bbox": [10.0, 10.0, 5.0, 5.0]}]}
    ids = [store.create(buf.getvalue(), o, {}).job_id for o in (jobs[0], bad, jobs[1])]
    send_as_the_api(worker_settings.require_redis_url(), store, ids[1:])  # the batch takes them
    ctx = WorkerContext(
        settings=worker_settings.model_copy(update={"max_batch": 3}),
        store=store,
        worker_id="w1",
    )
    ctx._pipeline = pipeline
    store.heartbeat(ctx.worker_id, 60)
    assert run_job(ctx, ids[0]) is JobStatus.SUCCEEDED
    records = [store.get(j) for j in ids]
    assert [r.status if r else None for r in records] == [
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.SUCCEEDED,
    ]
    failed = records[1]
    assert failed is not None and failed.error is not None and failed.error.code == "bad_input"
    for record, options in ((records[0], jobs[0]), (records[2], jobs[1])):
        assert record is not None and record.result is not None
        assert record.result["timings_ms"]["batch_size"] == 2
        (typed,) = _typed([options])
        alone = pipeline.run(person["image"], typed, lambda *c: None)
        _close(
            _without_timings(alone), {k: v for k, v in record.result.items() if k != "timings_ms"}
        )
        assert record.progress is not None and record.progress.stage == "fit"
