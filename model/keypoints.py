"""Named 2D/3D keypoint formats and conversion between them.

A keypoint set is an array of shape ``(..., K, 3)``: ``[x, y, confidence]`` per joint (or
``[x, y, z]`` for 3D joints where only the reordering matters). Each format is a
`KeypointFormat`: its joint names in the order the format stores them. Joints are named in
lowercase snake_case, and a joint that is the same anatomical point in two formats has the same
name in both, so conversion between any two formats is a lookup by name:

- ``coco17``: COCO keypoints (the detector's heatmap order).
- ``openpose25``: OpenPose BODY_25 (COCO's face and limbs plus neck, mid-hip and six foot points).
- ``smpl24``: the 24 SMPL body-model joints, in SMPL's kinematic order. SMPL's ``neck`` shares
  OpenPose's name (an approximation: SMPL's joint sits a little higher).
- ``mediapipe33``: MediaPipe Pose landmarks. ``left_foot_index`` / ``right_foot_index`` are
  aliased to OpenPose's ``left_big_toe`` / ``right_big_toe`` (`ALIASES`).
- ``h36m17``: the Human3.6M 17-joint skeleton.

`convert_keypoints` fills joints the source lacks with zeros (confidence 0, i.e. "not
observed"), except OpenPose's ``neck`` and ``mid_hip``, which it derives as the midpoint of the
shoulders / hips when the source has no such joint. `flip_keypoints` mirrors pixel keypoints
left/right with each format's `KeypointFormat.flip_perm`.

Inputs may be numpy arrays or torch tensors; results have the input's type, dtype and device.
torch is imported only when a tensor is passed, so the API process can use this module without
torch installed.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Swapping these turns a joint's name into its mirror image's ("left_hip" <-> "right_hip",
# "mouth_left" <-> "mouth_right").
_MIRROR_PREFIXES = ("left_", "right_")
_MIRROR_SUFFIXES = ("_left", "_right")


def mirror_name(name: str) -> str:
    """The name of the joint's left/right mirror image; `name` itself for midline joints."""
    left, right = _MIRROR_PREFIXES
    if name.startswith(left):
        return right + name[len(left) :]
    if name.startswith(right):
        return left + name[len(right) :]
    left, right = _MIRROR_SUFFIXES
    if name.endswith(left):
        return name[: -len(left)] + right
    if name.endswith(right):
        return name[: -len(right)] + left
    return name


@dataclass(frozen=True)
class KeypointFormat:
    """An ordered set of named joints.

    name: the format's name (one of `FORMATS` for the built-in ones).
    names: joint names, in the order the format stores them (index i is joint ``names[i]``).
    flip_perm: the permutation that swaps left and right joints, computed from `names`: the
        mirrored set is ``flipped[..., i, :] = original[..., flip_perm[i], :]``. It is an
        involution, and midline joints map to themselves.
    """

    name: str
    names: tuple[str, ...]
    flip_perm: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            dupes = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ValueError(f"keypoint format {self.name!r} repeats joint names {dupes}")
        position = {n: i for i, n in enumerate(self.names)}
        perm = []
        for joint in self.names:
            mirror = mirror_name(joint)
            if mirror not in position:
                raise ValueError(
                    f"keypoint format {self.name!r} has {joint!r} but not its mirror {mirror!r}; "
                    "add it so the format can be flipped"
                )
            perm.append(position[mirror])
        # Frozen dataclass: derived fields are set once here, never changed afterwards.
        object.__setattr__(self, "flip_perm", tuple(perm))

    @property
    def num_keypoints(self) -> int:
        """K, the number of joints."""
        return len(self.names)

    def index(self, name: str) -> int:
        """The position of joint `name` in this format; ValueError naming the joints if absent."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(
                f"keypoint format {self.name!r} has no joint {name!r}; its joints: {self.names}"
            ) from None


_COCO17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

_OPENPOSE25 = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist", "mid_hip",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
)  # fmt: skip

_SMPL24 = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)  # fmt: skip

_MEDIAPIPE33 = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer",
    "right_eye_inner", "right_eye", "right_eye_outer", "left_ear", "right_ear",
    "mouth_left", "mouth_right", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_pinky", "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip

_H36M17 = (
    "pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "spine", "thorax", "neck_base", "head_top",
    "left_shoulder", "left_elbow", "left_wrist", "right_shoulder", "right_elbow", "right_wrist",
)  # fmt: skip

_FORMATS: dict[str, KeypointFormat] = {
    f.name: f
    for f in (
        KeypointFormat("coco17", _COCO17),
        KeypointFormat("openpose25", _OPENPOSE25),
        KeypointFormat("smpl24", _SMPL24),
        KeypointFormat("mediapipe33", _MEDIAPIPE33),
        KeypointFormat("h36m17", _H36M17),
    )
}

FORMATS: tuple[str, ...] = tuple(_FORMATS)
"""Names of the built-in keypoint formats, valid arguments of `get_format`."""

ALIASES: dict[str, tuple[str, ...]] = {
    # MediaPipe's "foot index" landmark is the tip of the big toe.
    "left_big_toe": ("left_foot_index",),
    "right_big_toe": ("right_foot_index",),
    "left_foot_index": ("left_big_toe",),
    "right_foot_index": ("right_big_toe",),
}
"""Other names of the same anatomical point, tried in order when a source lacks a joint's name."""

_DERIVED: dict[str, dict[str, tuple[str, str]]] = {
    # OpenPose made its BODY_25 neck and mid-hip labels for COCO images as these midpoints.
    "openpose25": {
        "neck": ("left_shoulder", "right_shoulder"),
        "mid_hip": ("left_hip", "right_hip"),
    },
}


def get_format(name: str | KeypointFormat) -> KeypointFormat:
    """The built-in keypoint format `name`; a `KeypointFormat` is returned unchanged.

    Raises ValueError listing the valid names.
    """
    if isinstance(name, KeypointFormat):
        return name
    try:
        return _FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown keypoint format {name!r}; valid formats: {FORMATS}") from None


@cache
def index_map(src: str | KeypointFormat, dst: str | KeypointFormat) -> tuple[int, ...]:
    """For each joint of `dst`, its index in `src` (by name, then by `ALIASES`), -1 if absent.

    The result has length ``get_format(dst).num_keypoints``. Joints `convert_keypoints`
    derives (OpenPose's neck and mid-hip) are -1 here when `src` lacks them.
    """
    s, d = get_format(src), get_format(dst)
    position = {n: i for i, n in enumerate(s.names)}
    out = []
    for joint in d.names:
        candidates = (joint, *ALIASES.get(joint, ()))
        out.append(next((position[c] for c in candidates if c in position), -1))
    missing = [j for j, i in zip(d.names, out, strict=True) if i < 0]
    if missing:
        logger.debug("%s -> %s: no source joint for %s", s.name, d.name, missing)
    return tuple(out)


def _is_tensor(points: Any) -> bool:
    # A tensor cannot exist unless torch is already imported, so this never imports torch.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(points, torch.Tensor)


def _check_shape(points: Any, fmt: KeypointFormat) -> None:
    shape = tuple(points.shape)
    if len(shape) < 2 or shape[-1] != 3:
        raise ValueError(
            f"keypoints must have shape (..., K, 3) [x, y, confidence], got shape {shape}"
        )
    if shape[-2] != fmt.num_keypoints:
        raise ValueError(
            f"keypoints in format {fmt.name!r} must have {fmt.num_keypoints} joints, shape "
            f"(..., {fmt.num_keypoints}, 3); got {shape[-2]} (shape {shape})"
        )


def _take(points: Any, indices: tuple[int, ...]) -> Any:
    """points[..., indices, :] with -1 entries giving zero rows; (..., K, 3) -> (..., len, 3)."""
    safe = [max(i, 0) for i in indices]
    present = [i >= 0 for i in indices]
    # `where`, not a 0/1 multiply, so a NaN in the stand-in row cannot leak into absent joints.
    if _is_tensor(points):
        import torch

        idx = torch.tensor(safe, dtype=torch.long, device=points.device)
        mask = torch.tensor(present, dtype=torch.bool, device=points.device)
        return torch.where(mask[:, None], points[..., idx, :], 0)
    mask_np = np.asarray(present, dtype=bool)
    return np.where(mask_np[:, None], points[..., np.asarray(safe, dtype=np.intp), :], 0)


def _minimum(a: Any, b: Any) -> Any:
    if _is_tensor(a):
        import torch

        return torch.minimum(a, b)
    return np.minimum(a, b)


def convert_keypoints(points: Any, src: str | KeypointFormat, dst: str | KeypointFormat) -> Any:
    """Reorder keypoints from format `src` to format `dst` by joint name.

    points: (..., K_src, 3) [x, y, confidence], a numpy array or torch tensor.
    Returns (..., K_dst, 3) of the same type, dtype and device (gradients flow for tensors).
    Joints `src` lacks are zeros (confidence 0). Converting to ``openpose25``, ``neck`` and
    ``mid_hip`` are the midpoints of the shoulders / hips when `src` has no such joint, with the
    smaller of the two confidences.
    Raises ValueError if the last dim is not 3 or K_src does not match `src`.
    """
    s, d = get_format(src), get_format(dst)
    if not _is_tensor(points):
        points = np.asarray(points)
    _check_shape(points, s)
    mapping = index_map(s, d)
    out = _take(points, mapping)
    for joint, (a, b) in _DERIVED.get(d.name, {}).items():
        j = d.index(joint)
        if mapping[j] >= 0 or a not in s.names or b not in s.names:
            continue
        pa, pb = points[..., s.index(a), :], points[..., s.index(b), :]
        out[..., j, :2] = (pa[..., :2] + pb[..., :2]) / 2
        out[..., j, 2] = _minimum(pa[..., 2], pb[..., 2])
    return out


def flip_keypoints(points: Any, fmt: str | KeypointFormat, image_width: float) -> Any:
    """Mirror pixel keypoints left/right in an image `image_width` pixels wide.

    points: (..., K, 3) [x, y, confidence] in format `fmt`, a numpy array or torch tensor.
    Returns (..., K, 3) of the same type and dtype: ``x -> image_width - x`` (pixel ``j`` covers
    ``[j, j + 1)``, so this is the exact mirror), with joints reordered by ``flip_perm`` so
    that ``left_*`` still names the person's left side. Flipping twice is the identity.
    """
    f = get_format(fmt)
    if not _is_tensor(points):
        points = np.asarray(points)
    _check_shape(points, f)
    out = _take(points, f.flip_perm)
    out[..., 0] = image_width - out[..., 0]
    return out
