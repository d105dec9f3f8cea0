"""What every motion export needs: a track's shaped rest body and its per-frame joint motion,
in the export frame (the glTF camera frame, see `model.motion_export`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.body import BodyModel
from model.geometry import axis_angle_to_rotmat, rotmat_to_quaternion
from model.keypoints import get_format
from model.motion import NUM_JOINTS, MotionTrack

# The camera frame (x right, y down, z forward) to the glTF camera frame (x right, y up, z
# backward): a 180° turn about x, as for mesh.glb.
CAMERA_TO_GL = np.diag([1.0, -1.0, -1.0])
JOINT_NAMES: tuple[str, ...] = tuple(get_format("smpl24").names)


@dataclass(frozen=True)
class RestBody:
    """A body model's un-posed (T-pose) body with one shape, in the body frame (y up), metres.

    vertices: (V, 3) float32 rest mesh, the shape blended in. faces: (F, 3) int64.
    joints: (24, 3) float64 rest joints of that shape. weights: (V, 24) float32 skinning
    weights (rows sum to 1). parents: the 24 joints' parents (-1 for the root, each parent
    before its child). names: SMPL joint names.
    """

    vertices: np.ndarray
    faces: np.ndarray
    joints: np.ndarray
    weights: np.ndarray
    parents: tuple[int, ...]
    names: tuple[str, ...] = JOINT_NAMES

    @property
    def offsets(self) -> np.ndarray:
        """(24, 3) each joint's rest position relative to its parent (the root's: absolute)."""
        rel = self.joints.copy()
        rel[1:] -= self.joints[list(self.parents[1:])]
        return rel

    def children(self, joint: int) -> list[int]:
        return [j for j, p in enumerate(self.parents) if p == joint]


def rest_body(body: BodyModel, betas: np.ndarray) -> RestBody:
    """`body`'s rest mesh and joints with shape `betas` (S,)."""
    from model import lbs

    with torch.no_grad():
        b = torch.as_tensor(np.asarray(betas), dtype=body.dtype, device=body.v_template.device)
        b = b.reshape(1, -1)[:, : body.num_betas]
        vertices = body.v_template + lbs.blend_shapes(b, body.shape_basis)[0]
        joints = body.rest_joints(b)[0]
    return RestBody(
        vertices=vertices.cpu().numpy().astype(np.float32),
        faces=np.asarray(body.faces, dtype=np.int64),
        joints=joints.cpu().double().numpy(),
        weights=body.lbs_weights.cpu().numpy().astype(np.float32),
        parents=tuple(int(p) for p in body.parents.cpu().tolist()),
    )


@dataclass(frozen=True)
class JointMotion:
    """A track's motion in the export frame, for one rest skeleton.

    rotations: (T, 24, 3, 3) float64 local joint rotations; the root's includes the turn
    into the export frame. root_position: (T, 3) float64 the root joint's position.
    """

    rotations: np.ndarray
    root_position: np.ndarray


def joint_motion(track: MotionTrack, rest: RestBody) -> JointMotion:
    """The local rotations and root position that pose `rest` as `track` in the export frame.

    SMPL puts a rest point x of the root's rigid part at R0 (x - j0) + j0 + trans (camera
    frame); the export frame is C times that, so the root joint rotates by C R0 and sits at
    C (j0 + trans); the other joints' local rotations are SMPL's.
    """
    aa = torch.from_numpy(np.asarray(track.poses, np.float64).reshape(-1, NUM_JOINTS, 3))
    rot = axis_angle_to_rotmat(aa).numpy()
    rot[:, 0] = CAMERA_TO_GL @ rot[:, 0]
    position = (rest.joints[0] + track.trans.astype(np.float64)) @ CAMERA_TO_GL.T
    return JointMotion(rotations=rot, root_position=position)


def matrix_to_quaternion_xyzw(rot: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) to unit quaternions (..., 4) in glTF's (x, y, z, w) order,
    w >= 0. Uses the largest of |w|, |x|, |y|, |z| as the pivot, accurate at every angle."""
    wxyz = rotmat_to_quaternion(torch.from_numpy(np.asarray(rot, dtype=np.float64))).numpy()
    return np.concatenate([wxyz[..., 1:], wxyz[..., :1]], axis=-1)
