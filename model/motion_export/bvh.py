"""animation.bvh: tracks as BVH (Biovision hierarchy) motion, in metres and degrees.

Skeleton: the 24 SMPL joints, depth first from the pelvis, each OFFSET its rest position
relative to its parent for the track's shape (the T-pose); the leaves (head, hands, feet)
end in an End Site half their own bone's length further on. Channels: the pelvis has
`Xposition Yposition Zposition Zrotation Yrotation Xrotation`, every other joint
`Zrotation Yrotation Xrotation`. That order means a joint's local rotation is
Rz(z) @ Ry(y) @ Rx(x) (`EULER_ORDER`, intrinsic Z then Y then X). The pelvis' OFFSET is zero
and its position channels are its absolute position, so readers that add the root OFFSET to
the position and readers that do not agree. Angles are unwrapped over time (no 360° jumps).

Frames: one BVH frame per source frame from the first frame any track covers to the last,
Frame Time = 1 / fps; frame 0 is source frame min(frames). A track holds its last seen pose
where it has no frame of its own (before its first: its first pose).

Several tracks: BVH has one hierarchy per motion line, so a root `world` (three position
channels, always 0) gets each track's skeleton as a child, its joints named
`track{id}_<joint>` (the pelvis then has six channels as a JOINT). One track: the pelvis is
the ROOT and the joints keep their SMPL names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.body import BodyModel
from model.motion import MotionTrack
from model.motion_export.skeleton import RestBody, joint_motion, rest_body

EULER_ORDER = "ZYX"
ROTATION_CHANNELS = "Zrotation Yrotation Xrotation"
POSITION_CHANNELS = "Xposition Yposition Zposition"


def matrix_to_euler_zyx(rot: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) to angles (..., 3) = (z, y, x) radians with
    R = Rz(z) @ Ry(y) @ Rx(x), y in [-π/2, π/2]. At y = ±π/2 (gimbal lock) x is 0."""
    rot = np.asarray(rot, dtype=np.float64)
    sy = -rot[..., 2, 0]
    cy = np.hypot(rot[..., 0, 0], rot[..., 1, 0])
    y = np.arctan2(sy, cy)
    locked = cy < 1e-9
    z = np.where(locked, np.arctan2(-rot[..., 0, 1], rot[..., 1, 1]),
                 np.arctan2(rot[..., 1, 0], rot[..., 0, 0]))  # fmt: skip
    x = np.where(locked, 0.0, np.arctan2(rot[..., 2, 1], rot[..., 2, 2]))
    return np.stack([z, y, x], axis=-1)


def euler_zyx_to_matrix(angles: np.ndarray) -> np.ndarray:
    """(..., 3) = (z, y, x) radians to Rz(z) @ Ry(y) @ Rx(x), (..., 3, 3)."""
    z, y, x = np.moveaxis(np.asarray(angles, dtype=np.float64), -1, 0)
    cz, sz, cy, sy, cx, sx = np.cos(z), np.sin(z), np.cos(y), np.sin(y), np.cos(x), np.sin(x)
    rows = [
        [cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx],
        [sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx],
        [-sy, cy * sx, cy * cx],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def depth_first(rest: RestBody) -> list[int]:
    """The joints in the order BVH lists them (and their channels): depth first from 0."""
    order: list[int] = []
    stack = [0]
    while stack:
        j = stack.pop()
        order.append(j)
        stack.extend(reversed(rest.children(j)))
    return order


def animation_bvh(body: BodyModel, tracks: Sequence[MotionTrack]) -> bytes:
    """The tracks as one BVH file (see the module doc). Raises ValueError when `tracks` is
    empty or their frame rates differ."""
    if not tracks:
        raise ValueError("animation_bvh needs at least one track")
    fps = {t.fps for t in tracks}
    if len(fps) != 1:
        raise ValueError(f"tracks of one BVH need one frame rate, got {sorted(fps)}")
    first = min(int(t.frames[0]) for t in tracks)
    last = max(int(t.frames[-1]) for t in tracks)
    timeline = np.arange(first, last + 1)
    several = len(tracks) > 1
    lines = ["HIERARCHY"]
    columns: list[np.ndarray] = []
    if several:
        lines += ["ROOT world", "{", "\tOFFSET 0.000000 0.000000 0.000000",
                  f"\tCHANNELS 3 {POSITION_CHANNELS}"]  # fmt: skip
        columns.append(np.zeros((timeline.size, 3)))
    for track in tracks:
        rest = rest_body(body, track.betas)
        prefix = f"track{track.track_id}_" if several else ""
        lines += _hierarchy(rest, prefix, depth=1 if several else 0)
        columns.append(_motion_columns(track, rest, timeline))
    if several:
        lines.append("}")
    values = np.concatenate(columns, axis=1)
    lines += ["MOTION", f"Frames: {timeline.size}", f"Frame Time: {1.0 / tracks[0].fps:.8f}"]
    lines += [" ".join(f"{v:.6f}" for v in row) for row in values]
    return ("\n".join(lines) + "\n").encode()


def _hierarchy(rest: RestBody, prefix: str, depth: int) -> list[str]:
    offsets = rest.offsets
    lines: list[str] = []

    def joint(j: int, level: int) -> None:
        tab = "\t" * level
        keyword = "ROOT" if j == 0 and level == 0 else "JOINT"
        offset = np.zeros(3) if j == 0 else offsets[j]
        channels = (f"CHANNELS 6 {POSITION_CHANNELS} {ROTATION_CHANNELS}" if j == 0
                    else f"CHANNELS 3 {ROTATION_CHANNELS}")  # fmt: skip
        lines.extend([f"{tab}{keyword} {prefix}{rest.names[j]}", f"{tab}{{",
                      f"{tab}\t{_vec(offset)}", f"{tab}\t{channels}"])  # fmt: skip
        children = rest.children(j)
        for c in children:
            joint(c, level + 1)
        if not children:  # a leaf: BVH needs an end point for its bone
            lines.extend([f"{tab}\tEnd Site", f"{tab}\t{{",
                          f"{tab}\t\t{_vec(offsets[j] * 0.5)}", f"{tab}\t}}"])  # fmt: skip
        lines.append(f"{tab}}}")

    joint(0, depth)
    return lines


def _vec(v: np.ndarray) -> str:
    return "OFFSET " + " ".join(f"{float(x):.6f}" for x in v)


def _motion_columns(track: MotionTrack, rest: RestBody, timeline: np.ndarray) -> np.ndarray:
    """(frames, 3 + 3 * 24) the track's channel values on `timeline`: the pelvis position
    (metres), then each joint's Z, Y, X angles (degrees) in depth-first order."""
    motion = joint_motion(track, rest)
    # The track's key at or before each timeline frame (its first key before it starts).
    key = np.clip(np.searchsorted(track.frames, timeline, side="right") - 1, 0, None)
    order = depth_first(rest)
    angles = matrix_to_euler_zyx(motion.rotations[:, order])  # (T, 24, 3)
    angles = np.unwrap(angles, axis=0)
    return np.concatenate(
        [motion.root_position[key], np.degrees(angles[key]).reshape(key.size, -1)], axis=1
    )
