"""A person's motion over frames: the shared type of image and video results for the exports
(`model.exports`: animation.glb, animation.bvh, smpl.npz).

A `MotionTrack` is one person (one track id) over the frames that person was seen in: SMPL
axis-angle pose per frame (global orientation first, as AMASS and SMPL tools store it), the
root translation in the full-image camera frame (x right, y down, z forward, metres: what
`RegressorOutput.translation` gives, SMPL's `transl`), one shape, and the video's frame rate.
An image job's person is a one-frame track (`tracks_from_output`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.outputs import CropInfo, RegressorOutput

NUM_JOINTS = 24
POSE_DIM = NUM_JOINTS * 3
# An image has no frame rate; its one-frame tracks get this one, so that a BVH frame time
# and a glTF key time exist. Any positive value would do.
IMAGE_FPS = 30.0


@dataclass(frozen=True)
class MotionTrack:
    """One person over T frames.

    track_id: the person's id (an image job: its index in the result's `people`).
    frames: (T,) int64, strictly increasing frame indices in the source (0 for an image).
    poses: (T, 72) float32, axis-angle per SMPL joint, joint 0 the global orientation.
    trans: (T, 3) float32, SMPL translation in the full-image camera frame, metres.
    betas: (10,) float32 (or as many as the body model uses), one shape for the track.
    fps: frames per second of the source; a frame f plays at f / fps seconds.
    """

    track_id: int
    frames: np.ndarray
    poses: np.ndarray
    trans: np.ndarray
    betas: np.ndarray
    fps: float

    def __post_init__(self) -> None:
        t = int(np.shape(self.frames)[0]) if np.ndim(self.frames) == 1 else -1
        if t < 1:
            raise ValueError(f"frames must be (T,) with T >= 1, got {np.shape(self.frames)}")
        shapes = {"poses": (self.poses, (t, POSE_DIM)), "trans": (self.trans, (t, 3))}
        for name, (value, shape) in shapes.items():
            if np.shape(value) != shape:
                raise ValueError(f"{name} must be {shape}, got {np.shape(value)}")
        if np.ndim(self.betas) != 1:
            raise ValueError(f"betas must be (S,), got {np.shape(self.betas)}")
        if t > 1 and not bool(np.all(np.diff(self.frames) > 0)):
            raise ValueError("frames must be strictly increasing")
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be positive, got {self.fps}")
        for name in ("poses", "trans", "betas"):
            if not bool(np.isfinite(getattr(self, name)).all()):
                raise ValueError(f"{name} has NaN/Inf entries")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def times(self) -> np.ndarray:
        """(T,) float64 seconds at which each frame plays."""
        return np.asarray(self.frames, dtype=np.float64) / self.fps

    @classmethod
    def create(
        cls,
        track_id: int,
        frames: np.ndarray,
        poses: np.ndarray,
        trans: np.ndarray,
        betas: np.ndarray,
        fps: float,
    ) -> MotionTrack:
        """A track with its arrays cast to the documented dtypes (and checked)."""
        return cls(
            track_id=int(track_id),
            frames=np.asarray(frames, dtype=np.int64).reshape(-1),
            poses=np.asarray(poses, dtype=np.float32).reshape(-1, POSE_DIM),
            trans=np.asarray(trans, dtype=np.float32).reshape(-1, 3),
            betas=np.asarray(betas, dtype=np.float32).reshape(-1),
            fps=float(fps),
        )


def tracks_from_output(
    pred: RegressorOutput, crop: CropInfo, fps: float = IMAGE_FPS
) -> list[MotionTrack]:
    """One one-frame track per person of an image job (track id = the person's index).

    pred: the B people's final prediction (a `FitResult.final`, or the regression when no
    fit ran). crop: their `CropInfo`, for the full-image translation.
    """
    import torch

    from model.geometry import rotmat_to_axis_angle

    pred, crop = pred.detach().to("cpu"), crop.to("cpu")
    with torch.no_grad():
        # float64 for the conversion: the exports read rotations back from these angles.
        aa = rotmat_to_axis_angle(pred.params.rotmats().double())
        poses = aa.reshape(pred.batch_size, POSE_DIM).numpy()
        trans = pred.translation(crop).double().numpy()
        betas = pred.params.betas.numpy()
    return [
        MotionTrack.create(i, np.zeros(1), poses[i : i + 1], trans[i : i + 1], betas[i], fps)
        for i in range(pred.batch_size)
    ]
