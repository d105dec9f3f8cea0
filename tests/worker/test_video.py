"""Video jobs in the worker: decoding limits and errors, tracks, smoothing, the result."""

from __future__ import annotations

import numpy as np
import pytest

from service.contract import RecoverOptions, RecoverResult
from worker.pipeline import EchoPipeline, PermanentJobError
from worker.video import FrameLimits, build_tracks, is_video_job, open_video, run_video

pytest.importorskip("av")
from training.synth.motion import MotionConfig, encode_video, make_clip  # noqa: E402

NOISE = np.random.default_rng(0).integers(0, 255, (30, 48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return encode_video(NOISE, 30.0)


def test_frames_decode_with_their_rate(mp4: bytes) -> None:
    video = open_video(mp4, FrameLimits())
    frames = list(video.frames)
    assert (video.fps, video.width, video.height, video.expected) == (30.0, 64, 48, 30)
    assert len(frames) == 30 and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8


@pytest.mark.parametrize(
    ("make", "limits", "message"),
    [
        (lambda v: v, FrameLimits(max_frames=10), "more than 10 frames"),
        (lambda v: v, FrameLimits(max_seconds=0.5), "1.0 s long; the limit is 0.5 s"),
        (lambda v: v, FrameLimits(max_pixels=100), "64x48 = 3072 pixels"),
        (lambda v: v[: len(v) * 2 // 3], FrameLimits(), "could not be opened as a video"),
        (lambda v: b"\x1a\x45\xdf\xa3webm" + bytes(range(256)) * 4, FrameLimits(), "could not be opened"),
        (lambda v: encode_video(NOISE, 30.0, "webm")[:600], FrameLimits(), "no frames that decode"),
    ],
    ids=["frames", "duration", "pixels", "truncated", "junk", "zero-frames"],
)
def test_bad_videos_fail_with_a_reason(mp4: bytes, make, limits: FrameLimits, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermanentJobError, match=message):
        video = open_video(make(mp4), limits)
        for _ in video.frames:
            pass


def test_limits_come_from_the_job_record() -> None:
    meta = {"kind": "video", "limits": {"max_bytes": 5, "max_seconds": 3.0, "max_frames": 7, "max_pixels": 9}}
    assert is_video_job(meta) and not is_video_job({"format": "PNG"}) and not is_video_job(None)
    assert FrameLimits.from_meta(meta) == FrameLimits(3.0, 7, 9)


def test_echo_pipeline_reports_the_video(mp4: bytes) -> None:
    calls: list[tuple[str, int, int]] = []
    out = run_video(EchoPipeline(), mp4, {"kind": "video"}, RecoverOptions(), lambda *a: calls.append(a))
    assert out.result["video"] == {"fps": 30.0, "frames": 30, "duration_s": 1.0, "frames_with_people": 30}
    assert out.result["tracks"] == []
    frames = [c for c in calls if c[0] == "frames"]
    assert frames[0] == ("frames", 0, 30) and frames[-1] == ("frames", 30, 30)
    assert [c[1] for c in frames] == sorted(c[1] for c in frames)


def _person(box: list[float]) -> dict:
    kp = [[box[0] + i, box[1] + i, 1.0] for i in range(17)]
    return {"bbox": box, "keypoints_2d": kp}


def test_tracks_drop_stray_detections_and_number_from_zero() -> None:
    per_frame = [[_person([10.0 + t, 10.0, 50.0 + t, 90.0])] for t in range(6)]
    per_frame[2] = per_frame[2] + [_person([200.0, 10.0, 240.0, 90.0])]  # one frame only
    per_frame[4] = []  # missed
    tracks = build_tracks(per_frame, RecoverOptions())
    assert [(t.track_id, t.frames) for t in tracks] == [(0, [0, 1, 2, 3, 5])]


@pytest.fixture(scope="module")
def onnx_pipeline():  # type: ignore[no-untyped-def]
    from worker.config import WorkerSettings
    from worker.inference import build_pipeline
    from worker.runtime import SHIPPED_CHECKPOINT

    if not SHIPPED_CHECKPOINT.is_file():
        pytest.skip("no shipped model")
    return build_pipeline(WorkerSettings(pipeline="onnx", onnx_threads=1, torch_threads=1))


def test_a_synthetic_clip_gives_one_smoothed_track(onnx_pipeline) -> None:  # type: ignore[no-untyped-def]
    clip = make_clip(MotionConfig(frames=24, image_hw=(240, 320)), seed=0)
    data = encode_video(clip.frames, clip.fps)
    options = RecoverOptions.from_job({"return": ["joints3d", "smpl_npz"], "video": {"one_euro": {"enabled": True}}})
    out = run_video(onnx_pipeline, data, {"kind": "video"}, options, lambda *a: None)
    result = RecoverResult.model_validate(out.result)
    assert result.people == [] and result.video is not None and result.video.frames == 24
    assert result.tracks is not None
    (track,) = result.tracks
    # BlazePose misses the odd frame of a small synthetic render: those frames are skipped.
    n = len(track.frames)
    assert n >= 20 and len(track.people) == n and track.frames == sorted(set(track.frames))
    assert track.smoothing == {"temporal_steps": 60, "one_euro": True}
    betas = {tuple(p.smpl.betas) for p in track.people}
    assert len(betas) == 1  # one shape per track
    joints = np.array([p.joints3d for p in track.people])
    assert joints.shape == (n, 24, 3) and np.isfinite(joints).all()
    assert set(out.files) == {"smpl.npz"}
    # The track follows the person: its boxes stay on the rendered one.
    boxes = np.array([p.bbox for p in track.people])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    truth = (clip.people[0].bbox[track.frames, :2] + clip.people[0].bbox[track.frames, 2:]) / 2
    assert np.abs(centres - truth).max() < 40


def test_no_person_in_any_frame_fails_the_job(onnx_pipeline) -> None:  # type: ignore[no-untyped-def]
    grey = np.full((6, 120, 160, 3), 128, np.uint8)
    with pytest.raises(PermanentJobError, match="no person was found in any of the video's 6 frames"):
        run_video(onnx_pipeline, encode_video(grey, 30.0), {"kind": "video"}, RecoverOptions(), lambda *a: None)


def test_a_frame_with_nobody_is_not_fitted_as_the_whole_frame(onnx_pipeline) -> None:  # type: ignore[no-untyped-def]
    """An image job with nobody found gets the whole image as one person; a video frame
    (run_batch(whole_image=False)) gets NoPeopleFound instead, the others of its batch
    their results."""
    from worker.pipeline import NoPeopleFound

    clip = make_clip(MotionConfig(frames=2, image_hw=(240, 320)), seed=0)
    grey = np.full((240, 320, 3), 128, np.uint8)
    quiet = lambda *a: None  # noqa: E731
    (alone,) = onnx_pipeline.run_batch([grey], [RecoverOptions()], [quiet])
    assert [p["bbox"] for p in alone.result["people"]] == [[0.0, 0.0, 320.0, 240.0]]
    empty, found = onnx_pipeline.run_batch(
        [grey, clip.frames[0]], [RecoverOptions()] * 2, [quiet] * 2, whole_image=False
    )
    assert isinstance(empty, NoPeopleFound)
    assert len(found.result["people"]) == 1
    assert found.result["people"][0]["bbox"] != [0.0, 0.0, 320.0, 240.0]
