"""Training augmentation for one person: flip, scale, shift, rotation, colour, occlusion.

Geometric augmentations keep every label consistent with a full-image pinhole camera, so
CLIFF's bbox information and the full-image reprojection stay exact:
- a flip mirrors the whole image (x -> W - x): left/right keypoints swap, 3D points get
  X -> -X, the SMPL pose is mirrored;
- a rotation of the crop about the box centre equals cropping an image rolled about the
  principal point (see `model.crop`): 2D points, the box centre, 3D points and the root
  orientation turn together, about the optical axis.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from model.crop import CROP_HW, crop_affine, crop_image


@dataclass(frozen=True)
class AugmentConfig:
    """SPIN/CLIFF-style ranges. scale: box size factor range; shift: centre jitter as a
    fraction of the box; rotation_deg: max |angle|, applied with rotation_prob."""

    flip_prob: float = 0.5
    scale: tuple[float, float] = (0.8, 1.25)
    shift: float = 0.08
    rotation_deg: float = 30.0
    rotation_prob: float = 0.4
    color: float = 0.3  # per-channel gain in [1 - color, 1 + color]
    occlusion_prob: float = 0.3


@dataclass(frozen=True)
class Person:
    """One annotated person in its full image. Arrays are float64 unless noted.

    image: (H, W, 3) uint8. center: (2,) box centre px; box_size: box side px;
    focal: px. keypoints: (17, 3) COCO-17 [x, y, conf] px. joints2d: (24, 3) SMPL-24 px
    (conf 0 when unknown). joints3d: (24, 3) camera frame m. pose: (72,) axis-angle;
    betas: (10,); cam_t: (3,) SMPL translation, camera frame. has_*: whether the label
    exists (absent ones are zeros).
    """

    image: np.ndarray
    center: np.ndarray
    box_size: float
    focal: float
    keypoints: np.ndarray
    joints2d: np.ndarray
    joints3d: np.ndarray
    pose: np.ndarray
    betas: np.ndarray
    cam_t: np.ndarray
    has_smpl: bool
    has_joints3d: bool
    has_cam_t: bool

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


def _flip_perm(name: str) -> list[int]:
    from model.keypoints import get_format

    return list(get_format(name).flip_perm)


def flip_smpl_pose(pose: np.ndarray) -> np.ndarray:
    """Mirror an SMPL axis-angle pose (72,) across the x = 0 plane: swap left/right joints
    and negate the y and z rotation components."""
    aa = pose.reshape(24, 3)[_flip_perm("smpl24")]
    return (aa * np.array([1.0, -1.0, -1.0])).reshape(72)


def flip_person(p: Person) -> Person:
    """Mirror the full image left/right, with all labels."""
    w = p.image_hw[1]

    def mirror_2d(points: np.ndarray, fmt: str) -> np.ndarray:
        out = points[_flip_perm(fmt)].copy()
        out[:, 0] = w - out[:, 0]
        return out

    mirror3 = np.array([-1.0, 1.0, 1.0])
    joints3d = p.joints3d[_flip_perm("smpl24")] * mirror3
    # The SMPL root sits at rest_pelvis + cam_t; mirroring the pelvis fixes the new cam_t.
    rest_pelvis = p.joints3d[0] - p.cam_t
    cam_t = joints3d[0] - rest_pelvis if p.has_cam_t and p.has_joints3d else p.cam_t * mirror3
    return replace(
        p,
        image=np.ascontiguousarray(p.image[:, ::-1]),
        center=np.array([w - p.center[0], p.center[1]]),
        keypoints=mirror_2d(p.keypoints, "coco17"),
        joints2d=mirror_2d(p.joints2d, "smpl24"),
        joints3d=joints3d,
        pose=flip_smpl_pose(p.pose) if p.has_smpl else p.pose,
        cam_t=cam_t,
    )


def roll_labels(p: Person, rotation_deg: float) -> Person:
    """Labels as seen by a camera rolled so the crop turns by `rotation_deg` (model.crop's
    sign: counter-clockwise on screen). The image is left alone: `crop_image` with the same
    angle at the original centre cuts exactly the crop of the rolled image."""
    if rotation_deg == 0.0:
        return p
    from scipy.spatial.transform import Rotation

    # The crop's linear part divided by its scale is the 2D rotation, full -> rolled frame.
    linear = crop_affine(np.zeros(2), 1.0, (1, 1), rotation_deg)[:, :2]
    r3 = np.eye(3)
    r3[:2, :2] = linear
    h, w = p.image_hw
    pp = np.array([w / 2.0, h / 2.0])

    def turn_2d(points: np.ndarray) -> np.ndarray:
        out = points.copy()
        out[:, :2] = (points[:, :2] - pp) @ linear.T + pp
        return out

    joints3d = p.joints3d @ r3.T
    rest_pelvis = p.joints3d[0] - p.cam_t
    pose = p.pose.copy()
    if p.has_smpl:
        root = Rotation.from_rotvec(pose[:3]).as_matrix()
        pose[:3] = Rotation.from_matrix(r3 @ root).as_rotvec()
    return replace(
        p,
        center=linear @ (p.center - pp) + pp,
        keypoints=turn_2d(p.keypoints),
        joints2d=turn_2d(p.joints2d),
        joints3d=joints3d,
        pose=pose,
        cam_t=joints3d[0] - rest_pelvis if p.has_joints3d else r3 @ p.cam_t,
    )


@dataclass(frozen=True)
class AugmentParams:
    flip: bool
    scale: float
    shift: tuple[float, float]
    rotation_deg: float
    gains: tuple[float, float, float]
    occlude: bool


NO_AUGMENT = AugmentParams(False, 1.0, (0.0, 0.0), 0.0, (1.0, 1.0, 1.0), False)


def sample_params(rng: np.random.Generator, cfg: AugmentConfig) -> AugmentParams:
    rot = float(np.clip(rng.normal(0, cfg.rotation_deg / 2), -cfg.rotation_deg, cfg.rotation_deg))
    return AugmentParams(
        flip=bool(rng.random() < cfg.flip_prob),
        scale=float(rng.uniform(*cfg.scale)),
        shift=(float(rng.uniform(-cfg.shift, cfg.shift)), float(rng.uniform(-cfg.shift, cfg.shift))),
        rotation_deg=rot if rng.random() < cfg.rotation_prob else 0.0,
        gains=tuple(float(g) for g in rng.uniform(1 - cfg.color, 1 + cfg.color, size=3)),  # type: ignore[arg-type]
        occlude=bool(rng.random() < cfg.occlusion_prob),
    )


def synthetic_occlusion(rng: np.random.Generator, crop: np.ndarray) -> np.ndarray:
    """Paste one random occluder (box, ellipse or polygon; flat or textured) on a crop."""
    from training.synth.occluders import OccluderConfig, draw_occluders

    out = crop.copy()
    h, w = crop.shape[:2]
    cfg = OccluderConfig(prob=1.0, max_count=1, size=(0.2, 0.5))
    draw_occluders(rng, out, np.array([0.0, 0.0, w, h]), cfg)
    return out


def augment_and_crop(
    rng: np.random.Generator, p: Person, params: AugmentParams, out_hw: tuple[int, int] = CROP_HW
) -> tuple[np.ndarray, Person]:
    """Apply `params` and cut the crop.

    Returns (crop (h, w, 3) uint8, the person's labels in the augmented full-image frame,
    where the crop is the axis-aligned `crop_affine(center, box_size)` of the frame).
    """
    if params.flip:
        p = flip_person(p)
    center = p.center + np.array(params.shift) * p.box_size
    p = replace(p, center=center, box_size=p.box_size * params.scale)
    crop, _ = crop_image(p.image, p.center, p.box_size, out_hw, params.rotation_deg)
    p = roll_labels(p, params.rotation_deg)
    if params.gains != (1.0, 1.0, 1.0):
        crop = np.clip(crop * np.array(params.gains), 0, 255).astype(np.uint8)
    if params.occlude:
        crop = synthetic_occlusion(rng, crop)
    return crop, p
