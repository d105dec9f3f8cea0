"""Video jobs (ARCHITECTURE §1, "video"): decode, the image pipeline per frame, tracks,
temporal smoothing, one result per track.

1. **decode** (`open_video`): PyAV, frames streamed a batch at a time (never the whole
   video in memory), held to the limits the API stored with the job (duration, frames,
   pixels). A file that is not a video, has no video stream, no frames, or frames that do
   not decode fails the job with `PermanentJobError` saying so.
2. **per frame**: the pipeline's own `run_batch` (detect, regress, fit) over `batch` frames
   at once (1: frame by frame). Where the person detector finds nobody, the image
   pipeline would take the whole frame as one person; a video asks it not to
   (`whole_image=False`) and that frame has no people.
3. **track** (`model.tracking`): ids across frames from boxes and keypoints; tracks
   shorter than `options.video.min_track_frames` are dropped.
4. **smooth** (`model.temporal`): per contiguous run of a track, the windowed temporal fit
   and/or the One-Euro filter, as the options ask.
5. **result**: `RecoverResult` with `video` and `tracks` (per-frame people entries, the
   smoothed SMPL and camera); the motion exports of the tracks when asked for.

Progress: stage "frames", frames done / total (the container's count, or an estimate from
its duration), then "smooth".
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.contract import (
    DEFAULT_MAX_VIDEO_FRAMES,
    DEFAULT_MAX_VIDEO_PIXELS,
    DEFAULT_MAX_VIDEO_S,
    RecoverOptions,
    RecoverResult,
)
from worker.pipeline import NoPeopleFound, PermanentJobError, Pipeline, PipelineResult, ProgressFn

log = logging.getLogger(__name__)

DEFAULT_BATCH = 8  # frames per `run_batch` call (faster than one at a time: `metahmr bench video`)


def is_video_job(meta: Mapping[str, Any] | None) -> bool:
    """Whether a job's upload description (`JobRecord.image`) is a video's."""
    return bool(meta) and meta.get("kind") == "video"  # type: ignore[union-attr]


@dataclass(frozen=True)
class FrameLimits:
    """The API's video limits as stored with the job (`service.video.VideoLimits`); the
    API's defaults for a job stored without them."""

    max_seconds: float = DEFAULT_MAX_VIDEO_S
    max_frames: int = DEFAULT_MAX_VIDEO_FRAMES
    max_pixels: int = DEFAULT_MAX_VIDEO_PIXELS

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> FrameLimits:
        limits = meta.get("limits") or {}
        return cls(**{k: limits[k] for k in ("max_seconds", "max_frames", "max_pixels") if k in limits})


@dataclass(frozen=True)
class VideoStream:
    """An opened video. frames: the decoded frames, (H, W, 3) uint8 RGB, one at a time;
    expected: the container's frame count or an estimate (0 when unknown)."""

    fps: float
    width: int
    height: int
    expected: int
    frames: Iterator[np.ndarray]


def open_video(data: bytes, limits: FrameLimits) -> VideoStream:
    """Open `data` with PyAV and check its header against `limits` (PermanentJobError)."""
    import av

    try:
        container = av.open(io.BytesIO(data))
    except (av.error.FFmpegError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise PermanentJobError(f"the upload could not be opened as a video: {reason}") from exc
    if not container.streams.video:
        container.close()
        raise PermanentJobError("the file has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    width, height = int(stream.codec_context.width), int(stream.codec_context.height)
    duration = _duration_s(container, stream)
    problem = None
    if not (fps > 0 and math.isfinite(fps)):
        problem = "the video has no frame rate"
    elif width * height > limits.max_pixels:
        problem = (f"video frames are {width}x{height} = {width * height} pixels; the limit is "
                   f"{limits.max_pixels}")  # fmt: skip
    elif duration is not None and duration > limits.max_seconds + 0.5 / fps:
        problem = f"the video is {duration:.1f} s long; the limit is {limits.max_seconds:g} s"
    if problem is not None:
        container.close()
        raise PermanentJobError(problem)
    expected = int(stream.frames) or (int(round(duration * fps)) if duration else 0)
    return VideoStream(fps, width, height, expected, _frames(container, stream, limits))


def _duration_s(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000  # av.time_base
    return None


def _frames(container: Any, stream: Any, limits: FrameLimits) -> Iterator[np.ndarray]:
    import av

    count = 0
    try:
        for frame in container.decode(stream):
            count += 1
            if count > limits.max_frames:
                raise PermanentJobError(f"the video has more than {limits.max_frames} frames (the limit)")
            yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise PermanentJobError(f"frame {count + 1} of the video could not be decoded: {reason}") from exc
    finally:
        container.close()
    if count == 0:
        raise PermanentJobError("the video has no frames that decode")


def _chunks(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    chunk: list[np.ndarray] = []
    for frame in frames:
        chunk.append(frame)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_video(
    pipeline: Pipeline,
    data: bytes,
    meta: Mapping[str, Any],
    options: RecoverOptions,
    progress: ProgressFn,
    batch: int = DEFAULT_BATCH,
) -> PipelineResult:
    """A video job's result (module docstring). meta: the job's upload description."""
    start = time.perf_counter()
    video = open_video(data, FrameLimits.from_meta(meta))
    progress("frames", 0, video.expected)
    per_frame: list[list[dict[str, Any]]] = []
    first: dict[str, Any] | None = None
    quiet: ProgressFn = lambda stage, step, total: None  # noqa: E731
    # Files and joints are made once per track at the end, not per frame.
    per_frame_options = options.model_copy(update={"return_": []})
    for chunk in _chunks(video.frames, max(1, batch)):
        outs = pipeline.run_batch(
            chunk, [per_frame_options] * len(chunk), [quiet] * len(chunk), whole_image=False
        )
        for out in outs:
            if isinstance(out, NoPeopleFound):
                per_frame.append([])
                continue
            if isinstance(out, Exception):
                raise out
            first = first or out.result
            per_frame.append(out.result["people"])
        progress("frames", len(per_frame), max(video.expected, len(per_frame)))
    timings = {"frames": (time.perf_counter() - start) * 1000.0}
    info = {"fps": video.fps, "frames": len(per_frame), "duration_s": len(per_frame) / video.fps,
            "frames_with_people": sum(1 for p in per_frame if p)}  # fmt: skip
    if first is None or not info["frames_with_people"]:
        raise PermanentJobError(f"no person was found in any of the video's {len(per_frame)} frames")
    if getattr(pipeline, "name", "") == "echo":  # diagnostics: no bodies to track
        echo = dict(first, video=info, tracks=[])
        echo["timings_ms"] = dict(timings, total=(time.perf_counter() - start) * 1000.0)
        return PipelineResult(result=echo)
    progress("smooth", 0, 1)
    smooth_start = time.perf_counter()
    tracks = build_tracks(per_frame, options)
    if not tracks:
        raise PermanentJobError(
            f"no person was seen in {options.video.min_track_frames} or more frames "
            f"(options.video.min_track_frames) of the video's {len(per_frame)} frames"
        )
    image = first["image"]
    motion = smooth_tracks(pipeline, tracks, options, video.fps, image, "joints3d" in options.return_)
    timings["smooth"] = (time.perf_counter() - smooth_start) * 1000.0
    progress("smooth", 1, 1)
    files: dict[str, bytes] = {}
    if set(options.return_) & {"animation", "bvh", "smpl_npz"}:
        from worker.stages.files import export_files

        files = export_files(pipeline.body, motion, set(options.return_))  # type: ignore[attr-defined]
    timings["total"] = (time.perf_counter() - start) * 1000.0
    result = RecoverResult.model_validate({
        "model": first["model"], "image": image, "people": [], "timings_ms": timings,
        "video": info, "tracks": [t.to_json() for t in tracks],
    })  # fmt: skip
    return PipelineResult(result=result.to_job(), files=files)


@dataclass
class _Track:
    track_id: int
    frames: list[int]
    people: list[dict[str, Any]]
    smoothing: dict[str, bool | int]

    def to_json(self) -> dict[str, Any]:
        return {"track_id": self.track_id, "frames": self.frames, "people": self.people,
                "smoothing": self.smoothing}  # fmt: skip


def build_tracks(per_frame: Sequence[Sequence[dict[str, Any]]], options: RecoverOptions) -> list[_Track]:
    """Track the frames' people (result `PersonOut` dicts); ids renumbered from 0 in order
    of first appearance, short tracks dropped."""
    from model.tracking import Tracker

    tracker = Tracker()
    found: dict[int, _Track] = {}
    for t, people in enumerate(per_frame):
        if not people:
            tracker.update(t, np.empty((0, 4)))
            continue
        boxes = np.array([p["bbox"] for p in people], dtype=np.float64)
        kps = np.array([p["keypoints_2d"] if p.get("keypoints_2d") else np.zeros((17, 3)) for p in people])
        for person, tid in zip(people, tracker.update(t, boxes, kps), strict=True):
            track = found.setdefault(tid, _Track(tid, [], [], {}))
            track.frames.append(t)
            track.people.append(dict(person))
    shortest = min(options.video.min_track_frames, len(per_frame))
    kept = [t for t in found.values() if len(t.frames) >= shortest]
    for new_id, track in enumerate(kept):
        track.track_id = new_id
    return kept


def _runs(frames: Sequence[int]) -> list[slice]:
    """Index ranges of consecutive frame numbers."""
    cuts = [i for i in range(1, len(frames)) if frames[i] != frames[i - 1] + 1]
    bounds = [0, *cuts, len(frames)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def smooth_tracks(
    pipeline: Any,
    tracks: Sequence[_Track],
    options: RecoverOptions,
    fps: float,
    image: Mapping[str, Any],
    want_joints: bool,
) -> list[Any]:
    """Smooth every track in place (its people's smpl/camera, joints3d when present);
    returns their `model.motion.MotionTrack`s for the exports."""
    import torch

    from model.geometry import axis_angle_to_rotmat, rotmat_to_axis_angle
    from model.motion import MotionTrack
    from model.outputs import SMPLParams
    from model.temporal import (
        OneEuroConfig,
        TemporalConfig,
        TrackParams,
        filter_track,
        refine_track,
    )

    v = options.video
    temporal = TemporalConfig(
        steps=v.temporal.steps if v.temporal.enabled else 0,
        window=v.temporal.window,
        overlap=min(16, v.temporal.window // 4),
        velocity_weight=v.temporal.velocity_weight,
        acceleration_weight=v.temporal.acceleration_weight,
    )
    euro = OneEuroConfig(min_cutoff=v.one_euro.min_cutoff, beta=v.one_euro.beta)
    body, device = pipeline.body, pipeline.device
    center = torch.tensor([image["width"] / 2.0, image["height"] / 2.0], device=device)
    out = []
    for track in tracks:
        people = track.people
        aa = torch.tensor([p["smpl"]["global_orient"] + p["smpl"]["body_pose"] for p in people],
                          dtype=torch.float32, device=device)  # fmt: skip
        params = TrackParams(
            axis_angle_to_rotmat(aa.view(-1, 24, 3)),
            torch.tensor([p["smpl"]["betas"] for p in people], dtype=torch.float32, device=device),
            torch.tensor([p["camera"]["translation"] for p in people], dtype=torch.float32, device=device),
        )
        kps = torch.tensor([p["keypoints_2d"] or np.zeros((17, 3)).tolist() for p in people],
                           dtype=torch.float32, device=device)  # fmt: skip
        rot, trans = params.rotmats.clone(), params.trans.clone()
        betas = params.betas.mean(0, keepdim=True).expand(len(people), -1)
        for run in _runs(track.frames):
            part = TrackParams(params.rotmats[run], params.betas[run], params.trans[run])
            part = refine_track(body, part, kps[run], image["focal_length"], center, temporal)
            if v.one_euro.enabled:
                part = filter_track(part, fps, euro)
            rot[run], trans[run] = part.rotmats, part.trans
        with torch.no_grad():
            poses = rotmat_to_axis_angle(rot.double()).reshape(len(people), 72)
            joints = body.keypoints_only(SMPLParams(rot[:, :1], rot[:, 1:], betas)).joints + trans[:, None] if want_joints else None
        for i, person in enumerate(people):
            person["smpl"] = {"global_orient": poses[i, :3].tolist(), "body_pose": poses[i, 3:].tolist(),
                              "betas": betas[i].tolist()}  # fmt: skip
            person["camera"] = {"translation": trans[i].tolist()}
            if joints is not None:
                person["joints3d"] = joints[i].tolist()
        track.smoothing = {"temporal_steps": temporal.steps, "one_euro": v.one_euro.enabled}
        out.append(MotionTrack.create(track.track_id, np.asarray(track.frames), poses.cpu().numpy(),
                                      trans.detach().cpu().numpy(), betas[0].cpu().numpy(), fps))  # fmt: skip
    return out
