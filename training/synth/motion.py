"""Synthetic motion clips: bodies moving along smooth pose and root trajectories, rendered
frame by frame with their ground truth (the evaluation data of ARCHITECTURE §6 for video).

A clip is drawn from (seed, index) only. Each person gets key poses from the upright pose
families every `key_every_s` seconds; every joint rotation is interpolated between them by
a cubic rotation spline (C2: smooth velocity and acceleration, as real motion), the root
position by a cubic spline through key positions on the ground plane. The camera is static
or moves (a sideways dolly with a slow pan). "crossing" puts two people walking past each
other at different depths: the nearer one hides the other for a few frames.

World frame: y up, the camera looks along -z, people face +z (the camera) at yaw 0.
Ground truth per frame and person (`MotionPerson`): camera-frame SMPL pose (root composed
with the camera's rotation, so it is what a per-frame fit should find), translation, joints,
COCO-17 pixels and the box of the visible mask.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation, RotationSpline

from training.synth.appearance import sample_lighting, sample_vertex_colors
from training.synth.backgrounds import BackgroundConfig, sample_background
from training.synth.cameras import BODY_TO_CAMERA, focal_from_fov, project
from training.synth.engine import sample_rng
from training.synth.labels import box_from_mask
from training.synth.poses import families_for, sample_pose
from training.synth.shapes import sample_betas

CameraMotion = Literal["static", "moving"]
Scene = Literal["single", "crossing"]
# Upright families: a clip morphs between key poses, and lying or kneeling keys would make
# the body sink through the floor between them.
MOTION_FAMILIES = ("standing", "walking", "running", "reaching", "arms_raised", "gesturing")
MOTION_SPLIT_ID = 7  # part of every clip's seed: no clip shares a stream with an image split


@dataclass(frozen=True)
class MotionConfig:
    """One clip's settings. image_hw: (H, W); fov_deg: diagonal field of view."""

    frames: int = 150
    fps: float = 30.0
    image_hw: tuple[int, int] = (240, 320)
    fov_deg: float = 55.0
    camera: CameraMotion = "static"
    scene: Scene = "single"
    key_every_s: float = 0.6
    depth_m: tuple[float, float] = (4.0, 6.0)

    def __post_init__(self) -> None:
        if self.frames < 2 or self.fps <= 0:
            raise ValueError(f"a clip needs >= 2 frames and fps > 0 (got {self.frames}, {self.fps})")
        if self.camera not in ("static", "moving"):
            raise ValueError(f"camera must be 'static' or 'moving', got {self.camera!r}")
        if self.scene not in ("single", "crossing"):
            raise ValueError(f"scene must be 'single' or 'crossing', got {self.scene!r}")


@dataclass(frozen=True)
class MotionPerson:
    """Ground truth of one person over T frames (camera frame, metres, pixels).

    pose: (T, 72) axis-angle, root in the camera frame. betas: (10,). trans: (T, 3) SMPL
    translation (`body(pose, betas) + trans` is the camera-frame body). joints: (T, 24, 3).
    coco17: (T, 17, 3) pixels + 1/0 for inside the image. bbox: (T, 4) x0, y0, x1, y1 of the
    visible mask (the projected joints' box when nothing shows). visible: (T,) mask pixels.
    """

    pose: np.ndarray
    betas: np.ndarray
    trans: np.ndarray
    joints: np.ndarray
    coco17: np.ndarray
    bbox: np.ndarray
    visible: np.ndarray


@dataclass(frozen=True)
class MotionClip:
    """frames: (T, H, W, 3) uint8 RGB. focal: pixels (principal point at the centre)."""

    frames: np.ndarray
    fps: float
    focal: float
    people: tuple[MotionPerson, ...]
    config: MotionConfig


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """Clip `index`'s generator: the image splits' per-sample streams, with its own split id."""
    return sample_rng(seed, MOTION_SPLIT_ID, index)


@dataclass(frozen=True)
class _Path:
    """A person's world-frame motion. rots: (T, 24, 3, 3) (root in the world frame);
    pelvis: (T, 3) world position of the pelvis."""

    rots: np.ndarray
    pelvis: np.ndarray
    betas: np.ndarray


def _key_times(cfg: MotionConfig) -> np.ndarray:
    duration = (cfg.frames - 1) / cfg.fps
    # Keys at the fixed spacing (the last one past the end): a short clip is a piece of a
    # motion at the same pace, not the same motion squeezed.
    count = max(2, int(np.ceil(duration / cfg.key_every_s)) + 1)
    return np.arange(count) * cfg.key_every_s


def person_path(
    rng: np.random.Generator, cfg: MotionConfig, start: np.ndarray, end: np.ndarray
) -> _Path:
    """A smooth motion from world position `start` (3,) to `end` (3,) with wandering poses."""
    families = families_for(MOTION_FAMILIES)
    keys = _key_times(cfg)
    times = np.arange(cfg.frames) / cfg.fps
    heading = float(rng.uniform(-40.0, 40.0))
    key_rots = []
    for _ in keys:
        pose = sample_pose(rng, families, jitter_deg=2.0).pose.reshape(24, 3)
        rots = Rotation.from_rotvec(pose).as_matrix()
        yaw = heading + float(rng.normal(0.0, 15.0))
        rots[0] = Rotation.from_euler("y", yaw, degrees=True).as_matrix() @ rots[0]
        key_rots.append(rots)
    stacked = np.stack(key_rots)  # (K, 24, 3, 3)
    rots = np.empty((cfg.frames, 24, 3, 3))
    for j in range(24):
        rots[:, j] = RotationSpline(keys, Rotation.from_matrix(stacked[:, j]))(times).as_matrix()
    # Key positions along the straight line plus a little sideways wander; natural ends
    # would let the speed ring, so the clamped spline starts and ends at rest.
    line = start + (end - start) * (keys / keys[-1])[:, None]
    line[1:-1] += rng.normal(0.0, 0.08, size=(len(keys) - 2, 3)) * np.array([1.0, 0.2, 1.0])
    pelvis = CubicSpline(keys, line, bc_type="clamped")(times)
    return _Path(rots=rots, pelvis=pelvis, betas=sample_betas(rng, 1.0))


def camera_track(rng: np.random.Generator, cfg: MotionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame camera (views (T, 3, 3) world -> camera rotations, centres (T, 3) world)."""
    t = np.arange(cfg.frames) / cfg.fps
    pitch = float(rng.uniform(-2.0, 2.0))
    height = float(rng.uniform(-0.2, 0.0))  # the pelvis stays near the image centre
    centre = np.tile([0.0, height, 0.0], (cfg.frames, 1))
    yaw = np.zeros(cfg.frames)
    if cfg.camera == "moving":
        duration = max(t[-1], 4.0)  # a short clip sees part of a slow move, not a jerk
        amplitude = float(rng.uniform(0.4, 0.8)) * rng.choice([-1.0, 1.0])
        phase = 0.5 * (1.0 - np.cos(np.pi * t / duration))  # 0 -> 1, at rest at both ends
        centre[:, 0] = amplitude * phase
        centre[:, 2] = 0.3 * phase
        yaw = -np.degrees(np.arctan2(centre[:, 0], 4.5)) * 0.6
    views = np.stack([
        Rotation.from_euler("x", pitch, degrees=True).as_matrix()
        @ BODY_TO_CAMERA
        @ Rotation.from_euler("y", y, degrees=True).as_matrix()
        for y in yaw
    ])  # fmt: skip
    return views, centre


def _paths(rng: np.random.Generator, cfg: MotionConfig) -> list[_Path]:
    near, far = cfg.depth_m
    if cfg.scene == "single":
        z = -float(rng.uniform(near, far))
        x0 = float(rng.uniform(-0.6, 0.6))
        x1 = x0 + float(rng.uniform(-0.5, 0.5))
        start, end = np.array([x0, 0.0, z]), np.array([x1, 0.0, z + float(rng.uniform(-0.5, 0.5))])
        return [person_path(rng, cfg, start, end)]
    # Two people walking past each other: the nearer one crosses in front of the farther.
    span = float(rng.uniform(1.0, 1.4))
    return [
        person_path(rng, cfg, np.array([-span, 0.0, -near]), np.array([span, 0.0, -near])),
        person_path(rng, cfg, np.array([span, 0.0, -far]), np.array([-span, 0.0, -far])),
    ]


def make_clip(cfg: MotionConfig, seed: int = 0, index: int = 0, body: Any = None,
              renderer: Any = None) -> MotionClip:
    """Render clip `index` of `seed`. body: `model.body.BodyModel` (default: the bundled
    one); renderer: a `model.render.Renderer` to reuse (default: one for this clip)."""
    import torch

    from model.body import load_body_model
    from model.outputs import SMPLParams
    from model.render import LightSpec, MeshSpec, Renderer
    from training.synth.engine import body_template

    body = body if body is not None else load_body_model()
    rng = clip_rng(seed, index)
    hw = cfg.image_hw
    focal = focal_from_fov(cfg.fov_deg, hw)
    center = np.array([hw[1] / 2.0, hw[0] / 2.0])
    views, centres = camera_track(rng, cfg)
    paths = _paths(rng, cfg)
    template = body_template(body)
    colors = [sample_vertex_colors(rng, template) for _ in paths]
    lighting = sample_lighting(rng)
    light = LightSpec(direction=np.asarray(lighting.direction, dtype=np.float64),
                      intensity=lighting.intensity, color=np.asarray(lighting.color, dtype=np.float64),
                      ambient=lighting.ambient)  # fmt: skip
    # A background wider than the frame, slid against the camera's sideways motion.
    slide = int(round(0.25 * hw[1])) if cfg.camera == "moving" else 0
    background = sample_background(rng, (hw[0], hw[1] + 2 * slide), BackgroundConfig(photo_prob=0.0))
    faces = np.asarray(body.faces)
    posed = []
    for path in paths:
        # The camera-frame root rotation: view @ world root; the body then sits at the
        # pelvis's camera-frame position minus the rest pelvis (posing keeps the pelvis put).
        root_cam = np.einsum("tij,tjk->tik", views, path.rots[:, 0])
        rots = np.concatenate([root_cam[:, None], path.rots[:, 1:]], axis=1)
        t = torch.from_numpy(rots).float()
        betas = torch.from_numpy(path.betas).float().expand(cfg.frames, -1)
        with torch.no_grad():
            out = body(SMPLParams(t[:, :1], t[:, 1:], betas))
            rest_pelvis = body.rest_joints(betas[:1])[0, 0].double().numpy()
        pelvis_cam = np.einsum("tij,tj->ti", views, path.pelvis - centres)
        trans = pelvis_cam - rest_pelvis
        posed.append({
            "pose": Rotation.from_matrix(rots.reshape(-1, 3, 3)).as_rotvec().reshape(cfg.frames, 72),
            "betas": path.betas, "trans": trans,
            "vertices": out.vertices.double().numpy() + trans[:, None],
            "joints": out.joints.double().numpy() + trans[:, None],
            "coco17": out.coco17.double().numpy() + trans[:, None],
        })  # fmt: skip
    own = renderer is None
    renderer = renderer if renderer is not None else Renderer(hw[1], hw[0])
    frames = np.empty((cfg.frames, hw[0], hw[1], 3), np.uint8)
    boxes = np.zeros((len(paths), cfg.frames, 4), np.float32)
    visible = np.zeros((len(paths), cfg.frames), np.int64)
    try:
        for f in range(cfg.frames):
            shift = int(round(slide * (1.0 - centres[f, 0] / max(np.abs(centres[:, 0]).max(), 1e-6))))
            shift = min(max(shift, 0), 2 * slide)
            canvas = np.ascontiguousarray(background[:, shift:shift + hw[1]])
            meshes = [MeshSpec(vertices=p["vertices"][f].astype(np.float32), faces=faces, vertex_colors=c)
                      for p, c in zip(posed, colors, strict=True)]  # fmt: skip
            res = renderer.render(meshes, image=canvas, focal_length=(focal, focal), light=light)
            frames[f] = res.rgb
            for k, p in enumerate(posed):
                mask = res.instance == k
                visible[k, f] = int(mask.sum())
                box = box_from_mask(mask) if visible[k, f] else None
                boxes[k, f] = box if box is not None else _points_box(project(p["joints"][f], focal, center))
    finally:
        if own:
            renderer.close()
    people = []
    for k, p in enumerate(posed):
        px = project(p["coco17"], focal, center)
        inside = (px[..., 0] >= 0) & (px[..., 0] < hw[1]) & (px[..., 1] >= 0) & (px[..., 1] < hw[0])
        people.append(MotionPerson(
            pose=p["pose"].astype(np.float32), betas=p["betas"].astype(np.float32),
            trans=p["trans"].astype(np.float32), joints=p["joints"].astype(np.float32),
            coco17=np.concatenate([px, inside[..., None]], axis=-1).astype(np.float32),
            bbox=boxes[k], visible=visible[k],
        ))  # fmt: skip
    return MotionClip(frames=frames, fps=cfg.fps, focal=focal, people=tuple(people), config=cfg)


def _points_box(px: np.ndarray) -> np.ndarray:
    return np.concatenate([px.min(0), px.max(0)]).astype(np.float32)


def encode_video(frames: np.ndarray, fps: float, container: str = "mp4") -> bytes:
    """Frames (T, H, W, 3) uint8 as a video file: "mp4" (H.264), "webm" (VP9) or "mov"
    (H.264). Sides must be even (4:2:0 chroma)."""
    import av

    codecs = {"mp4": "libx264", "mov": "libx264", "webm": "libvpx-vp9"}
    if container not in codecs:
        raise ValueError(f"unknown container {container!r}; valid: {sorted(codecs)}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"frame sides must be even for 4:2:0 video, got {width}x{height}")
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codecs[container], rate=_rate(fps))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # High quality: the clips are ground truth for the fit, not a codec test.
        stream.options = {"crf": "12"} if codecs[container] == "libx264" else {"crf": "10", "b": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def _rate(fps: float) -> Any:
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
