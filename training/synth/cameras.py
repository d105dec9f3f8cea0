"""Camera sampler: image size, focal length from a field of view, view rotation, placement.

Conventions (ARCHITECTURE §4): full-image pinhole, principal point at the image centre,
camera frame x right, y down, z forward. The field of view is measured on the image
diagonal, so the project's default focal `sqrt(W^2 + H^2)` is a 53 degree lens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

# Aspect ratios (width : height) of common photos and video frames, landscape and portrait.
COMMON_ASPECTS: tuple[tuple[int, int], ...] = (
    (4, 3), (3, 4), (16, 9), (9, 16), (1, 1), (3, 2), (2, 3),
)
# Body frame (y up, facing +z) to camera frame (y down, z forward): a person with yaw 0
# faces the camera.
BODY_TO_CAMERA = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class CameraConfig:
    """Ranges the camera sampler draws from (degrees, metres, pixels)."""

    long_side: int = 640
    aspects: tuple[tuple[int, int], ...] = COMMON_ASPECTS
    fov_deg: tuple[float, float] = (40.0, 70.0)
    pitch_deg: tuple[float, float] = (-30.0, 30.0)
    roll_deg: tuple[float, float] = (-8.0, 8.0)
    depth_m: tuple[float, float] = (2.0, 12.0)
    # Share of samples where the person may be cut by the image border.
    truncation_prob: float = 0.1


@dataclass(frozen=True)
class CameraSample:
    """image_hw: (H, W); focal: pixels (fx = fy); view: (3, 3) body/world -> camera rotation;
    yaw_deg: the person's turn about the vertical axis (0 = facing the camera)."""

    image_hw: tuple[int, int]
    focal: float
    view: np.ndarray
    yaw_deg: float

    @property
    def center(self) -> np.ndarray:
        """Principal point (2,) = image centre, (x, y) pixels."""
        return np.array([self.image_hw[1] / 2.0, self.image_hw[0] / 2.0])


def focal_from_fov(fov_deg: float, image_hw: tuple[int, int]) -> float:
    """Focal length in pixels for a diagonal field of view."""
    diag = float(np.hypot(*image_hw))
    return diag / 2.0 / float(np.tan(np.radians(fov_deg) / 2.0))


def sample_camera(rng: np.random.Generator, cfg: CameraConfig) -> CameraSample:
    aw, ah = cfg.aspects[int(rng.integers(len(cfg.aspects)))]
    scale = cfg.long_side / max(aw, ah)
    # Even sizes: JPEG chroma subsampling and most video codecs expect them.
    hw = (int(round(ah * scale / 2)) * 2, int(round(aw * scale / 2)) * 2)
    focal = focal_from_fov(float(rng.uniform(*cfg.fov_deg)), hw)
    yaw = float(rng.uniform(-180.0, 180.0))
    pitch = float(rng.uniform(*cfg.pitch_deg))
    roll = float(rng.uniform(*cfg.roll_deg))
    view = (
        Rotation.from_euler("zx", [roll, pitch], degrees=True).as_matrix()
        @ BODY_TO_CAMERA
        @ Rotation.from_euler("y", yaw, degrees=True).as_matrix()
    )
    return CameraSample(hw, focal, view, yaw)


def project(points: np.ndarray, focal: float, center: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-frame points (..., 3) -> pixels (..., 2)."""
    z = np.maximum(points[..., 2:3], 1e-6)
    return points[..., :2] / z * focal + center


def place_person(
    rng: np.random.Generator, points: np.ndarray, camera: CameraSample, cfg: CameraConfig
) -> np.ndarray:
    """Translation (3,) that puts a posed body somewhere in the frame at 2-12 m.

    points: (K, 3) the body's keypoints in the camera frame without translation.
    The depth is drawn first; a body too large for the frame at that depth is pushed back
    (unless this sample is allowed to be truncated), then the centre pixel is drawn so the
    body's box lies inside the image.
    """
    h, w = camera.image_hw
    lo, hi = points.min(axis=0), points.max(axis=0)
    mid = (lo + hi) / 2.0
    size = hi[:2] - lo[:2]  # metres (x, y)
    truncated = rng.random() < cfg.truncation_prob
    fit = float(rng.uniform(1.1, 1.5)) if truncated else 0.95
    z = float(rng.uniform(*cfg.depth_m))
    extent = camera.focal * size / z  # pixels (w, h)
    push = max(extent[0] / (fit * w), extent[1] / (fit * h), 1.0)
    z = min(z * push, cfg.depth_m[1])
    extent = camera.focal * size / z
    slack = np.array([w, h]) - extent
    if truncated:
        pixel = np.array([w, h]) * rng.uniform(0.2, 0.8, size=2)
    else:
        pixel = np.where(
            slack > 0, extent / 2 + rng.uniform(0, 1, size=2) * np.maximum(slack, 0), [w / 2, h / 2]
        )
    target = np.array([(pixel[0] - w / 2) * z / camera.focal, (pixel[1] - h / 2) * z / camera.focal, z])
    return target - mid
