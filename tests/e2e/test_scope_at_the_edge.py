"""A real worker running a model publishes its TTO scope, and the API refuses another scope
before a job exists (issue 14 item 5)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from broker_checks import stored_job_ids
from PIL import Image

from service.client import ApiError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a model worker: ~15 s on 2 cores


def test_a_scope_the_model_was_not_trained_for_is_refused_at_the_api(
    stack, tiny_model_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    stack.workers.start(
        METAHMR_PIPELINE="onnx",
        METAHMR_MODEL_DIR=str(tiny_model_dir),
        METAHMR_ONNX_THREADS="1",
        METAHMR_TORCH_THREADS="1",
        METAHMR_BLAZEPOSE="off",
    )
    buf = io.BytesIO()
    Image.new("RGB", (128, 96), (90, 120, 150)).save(buf, "PNG")
    with pytest.raises(ApiError) as exc:
        stack.client.submit(
            buf.getvalue(), {"people": [{"bbox": [10, 10, 60, 90]}], "tto": {"scope": "full"}}
        )
    assert (exc.value.status, exc.value.code) == (422, "invalid_options")
    assert "'head'" in str(exc.value)
    assert stored_job_ids(stack.store.client) == set()
    job = stack.client.recover(
        buf.getvalue(),
        {"people": [{"bbox": [10, 10, 60, 90]}], "tto": {"scope": "head"}},
        timeout_s=60,
    )
    assert job["status"] == "succeeded" and job["result"]["model"]["tto_scope"] == "head"
