"""End to end with the model pipeline (METAHMR_PIPELINE=onnx): the docs' example photo and
keypoints through `metahmr recover`, uvicorn, Redis and a Celery worker running a tiny
exported model; results, mesh and overlay checked on the client side."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from result_checks import reprojection_px

from cli import main as metahmr
from model.body import load_body_model
from service.client import ApiError
from worker.runtime import SHIPPED_CHECKPOINT

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

EXAMPLE = REPO / "docs" / "img" / "example.jpg"
EXAMPLE_KEYPOINTS = REPO / "docs" / "img" / "example_keypoints.json"
TTO_STEPS = 11  # step 0 + the tiny model's own 10 steps: requests that name none run its schedule


def _onnx_worker(stack, model_dir: Path):  # type: ignore[no-untyped-def]
    return stack.workers.start(
        METAHMR_PIPELINE="onnx",
        METAHMR_MODEL_DIR=str(model_dir),
        METAHMR_ONNX_THREADS="1",
        METAHMR_TORCH_THREADS="1",
    )


def test_documented_recover_command_through_the_model_stack(
    stack, tiny_model_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _onnx_worker(stack, tiny_model_dir)
    out = tmp_path / "result.json"
    rc = metahmr([
        "recover", str(EXAMPLE), "--keypoints", str(EXAMPLE_KEYPOINTS), "--server", stack.url,
        "--overlay", str(tmp_path / "out.png"), "--mesh", str(tmp_path / "out.glb"),
        "--out", str(out), "--timeout", "60",
    ])  # fmt: skip
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["model"]["tto_scope"] == "head" and result["model"]["version"] == "random-init"
    assert result["image"] == {"width": 640, "height": 480, "focal_length": 800.0}
    (person,) = result["people"]
    assert {k: len(v) for k, v in person["smpl"].items()} == {
        "global_orient": 3, "body_pose": 69, "betas": 10,
    }  # fmt: skip
    assert len(person["camera"]["translation"]) == 3
    assert person["keypoint_source"] == "request"
    fit = person["fit"]
    assert fit["steps_run"] == TTO_STEPS and fit["loss_end"] < fit["loss_start"]
    body = load_body_model()
    keypoints = np.asarray(json.loads(EXAMPLE_KEYPOINTS.read_text())["points"])
    initial = person["initial"]
    before = reprojection_px(
        body, initial["smpl"], initial["camera"]["translation"], keypoints, result["image"]
    )
    after = reprojection_px(
        body, person["smpl"], person["camera"]["translation"], keypoints, result["image"]
    )
    assert after < 0.7 * before, (before, after)
    assert fit["reprojection_error_px"] == pytest.approx(after, rel=1e-3, abs=0.05)

    scene = trimesh.load(tmp_path / "out.glb", process=False)
    assert [g.vertices.shape for g in scene.geometry.values()] == [(body.num_vertices, 3)]
    overlay = Image.open(tmp_path / "out.png")
    assert overlay.format == "PNG" and overlay.size == (640, 480)
    photo = np.asarray(Image.open(EXAMPLE).convert("RGB"), np.int16)
    assert (np.abs(np.asarray(overlay.convert("RGB"), np.int16) - photo).max(-1) > 8).mean() > 0.005

    metrics = stack.client.http.get("/metrics").text  # the worker recorded the TTO steps
    assert f"metahmr_tto_steps_sum {float(TTO_STEPS)}" in metrics


def test_a_scope_the_model_was_not_trained_for_is_refused(stack, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The worker publishes its model's TTO scope when it loads; the API then refuses
    another scope at submission (422), and the right one runs."""
    _onnx_worker(stack, tiny_model_dir)
    options = {"tto": {"steps": 2, "scope": "full"}, "return": ["mesh"]}
    with pytest.raises(ApiError) as exc:
        stack.client.recover(EXAMPLE.read_bytes(), options, timeout_s=60)
    assert exc.value.status == 422 and exc.value.code == "invalid_options"
    assert "'head' scope" in exc.value.message
    job = stack.client.recover(EXAMPLE.read_bytes(), {"tto": {"steps": 1}, "return": ["mesh"]},
                               timeout_s=60)  # fmt: skip
    assert job["status"] == "succeeded"
    assert job["progress"] == {"stage": "render", "step": 1, "total": 1}
    (person,) = job["result"]["people"]
    assert person["keypoint_source"] == "blazepose" and person["fit"]["steps_run"] == 2
    glb = stack.client.download(job["job_id"], "mesh.glb")
    assert len(trimesh.load(io.BytesIO(glb), file_type="glb").geometry) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(SHIPPED_CHECKPOINT.exists(), reason="this installation ships a model")
def test_serve_without_a_model_says_what_to_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAHMR_")}
    env |= {"METAHMR_LOG_JSON": "0", "METAHMR_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--port", str(_free_port())],
        cwd=REPO, env=env, capture_output=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 1
    assert b"METAHMR_MODEL_DIR" in done.stderr and b"METAHMR_PIPELINE=echo" in done.stderr
