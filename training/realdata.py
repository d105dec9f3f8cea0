"""The real-photo split of `metahmr eval`: loading the set (scoring: `training.realdata_scores`).

The set (``shared/realdata``, see its README) is 25 real photographs: 11 with hand-made 2D
keypoints (``2d_keypoints``), 8 Human3.6M frames with mocap 3D joints and the camera
(``3d_gt``), 6 multi-person photos without labels (``unannotated``). Every source format is
reduced to the 12 `LIMB_JOINTS`, the joints all six formats share, by joint name
(`LIMB_SOURCE_NAMES`).

Nothing here knows the model. The caller turns images into `PersonPrediction`s, one per
person; `training.realdata_scores.score` compares them with the labels (limb errors as a
fraction of the box height, PA-MPJPE on the 3D frames, recall without boxes).

The labels come in two kinds of keypoint source: ``labelled`` (the annotations are sent to the
model as its keypoints) and ``builtin`` (the model finds its own).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

REALDATA_ENV = "METAHMR_REALDATA"
"""Environment variable naming the real-photo folder (see `find_realdata`)."""

ANNOTATIONS_FILE = "annotations.json"

LIMB_JOINTS: tuple[str, ...] = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
"""The 12 limb joints scored on real photos, COCO-17 names in COCO-17 order."""

NUM_LIMB_JOINTS = len(LIMB_JOINTS)

# Where each annotation format keeps the limb joints: its own joint names (as listed in
# annotations.json's "keypoint_formats"), in LIMB_JOINTS order. Left/right is the person's own
# side in every format, so no format needs swapping. Only H36M names differ from COCO's: its
# "foot" joints are the ankle centres (mocap joint centres, like every H36M joint).
_COCO_LIMB_NAMES = LIMB_JOINTS
LIMB_SOURCE_NAMES: dict[str, tuple[str, ...]] = {
    "aic_14": _COCO_LIMB_NAMES,
    "jhmdb_15": _COCO_LIMB_NAMES,
    "mpii_16": _COCO_LIMB_NAMES,  # also LV-MHP, which uses the MPII order
    "posetrack18_17": _COCO_LIMB_NAMES,
    "lsp_14": _COCO_LIMB_NAMES,
    "h36m_17": (
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
        "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
        "left_foot", "right_foot",
    ),
}  # fmt: skip

Kind = Literal["2d_keypoints", "3d_gt", "unannotated"]
KINDS: tuple[str, ...] = ("2d_keypoints", "3d_gt", "unannotated")

KeypointSource = Literal["labelled", "builtin"]
KEYPOINT_SOURCES: tuple[KeypointSource, ...] = ("labelled", "builtin")

GOOD_LIMB_ERROR = 0.10
"""A person whose limb error (fraction of box height) is under this counts as well fitted."""

MATCH_IOU = 0.5
"""Least box IoU for a prediction to match a labelled person (`match_people`)."""

RECALL_MIN_LABELLED = 8
"""People with at least this many labelled limb joints are the ones recall counts."""

MM = 1000.0


# ---------------------------------------------------------------------------------------------
# The set


class Pinhole(NamedTuple):
    """Pinhole intrinsics in pixels: ``u = fx X / Z + cx``, ``v = fy Y / Z + cy``."""

    fx: float
    fy: float
    cx: float
    cy: float

    def project(self, points: np.ndarray) -> np.ndarray:
        """points: (N, 3) camera frame (z forward, Z > 0) -> (N, 2) pixels."""
        points = np.asarray(points, dtype=np.float64)
        z = points[:, 2]
        return np.stack(
            [self.fx * points[:, 0] / z + self.cx, self.fy * points[:, 1] / z + self.cy], -1
        )


def _frozen_array(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = np.array(value, dtype=np.float64)  # a copy, so freezing it freezes nobody else's
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class RealPerson:
    """One labelled person.

    bbox_xyxy: (4,) [x0, y0, x1, y1] pixels (annotated, or derived from the keypoints for
        MPII, LSPET and H36M; see the set's README).
    limb2d: (12, 3) [x, y, labelled] in image pixels for `LIMB_JOINTS`; labelled is 1.0 for
        a labelled joint (visible or occluded), 0.0 for a joint not labelled (then x = y = 0).
    limb3d: (12, 3) metres in the camera frame (x right, y down, z forward), ``3d_gt`` only.
    camera: the pinhole intrinsics of the image, ``3d_gt`` only.
    source_format: the annotation format the joints came from (a key of `LIMB_SOURCE_NAMES`).
    """

    bbox_xyxy: np.ndarray
    limb2d: np.ndarray
    limb3d: np.ndarray | None = None
    camera: Pinhole | None = None
    source_format: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "bbox_xyxy", _frozen_array(self.bbox_xyxy, (4,), "bbox_xyxy"))
        object.__setattr__(
            self, "limb2d", _frozen_array(self.limb2d, (NUM_LIMB_JOINTS, 3), "limb2d")
        )
        if self.limb3d is not None:
            object.__setattr__(
                self, "limb3d", _frozen_array(self.limb3d, (NUM_LIMB_JOINTS, 3), "limb3d")
            )

    @property
    def box_height(self) -> float:
        """y1 - y0 of the box, pixels: the scale limb errors are divided by."""
        return float(self.bbox_xyxy[3] - self.bbox_xyxy[1])

    @property
    def labelled(self) -> np.ndarray:
        """(12,) bool, which limb joints are labelled."""
        return self.limb2d[:, 2] > 0

    @property
    def num_labelled(self) -> int:
        return int(self.labelled.sum())


@dataclass(frozen=True)
class RealImage:
    """One photograph. path: absolute. width, height: pixels. people: the labelled people
    (none for ``unannotated``; in PoseTrack and LSPET images other people are visible but not
    labelled)."""

    path: Path
    width: int
    height: int
    kind: Kind
    people: tuple[RealPerson, ...] = ()
    dataset: str = ""
    licence_class: str = ""


@dataclass(frozen=True)
class RealSet:
    """The real-photo set. root: the folder it was read from."""

    images: tuple[RealImage, ...]
    root: Path | None = None

    @property
    def num_people(self) -> int:
        """The number of labelled people over all images."""
        return sum(len(image.people) for image in self.images)


def default_realdata_path() -> Path:
    """``<repo>/../shared/realdata``, the repository being the folder holding ``training/``."""
    return Path(__file__).resolve().parent.parent.parent / "shared" / "realdata"


def find_realdata(explicit: str | Path | None = None) -> Path | None:
    """The real-photo folder, or None if it is not there (the split is then skipped).

    Looks at `explicit` if given, else at ``$METAHMR_REALDATA`` if set, else at
    `default_realdata_path`; only the first of these that is given is tried, so a wrong
    explicit path is not silently replaced by another folder (it logs a warning).
    """
    if explicit is not None:
        candidate, origin = Path(explicit), "the given path"
    elif os.environ.get(REALDATA_ENV):
        candidate, origin = Path(os.environ[REALDATA_ENV]), f"${REALDATA_ENV}"
    else:
        candidate, origin = default_realdata_path(), None
    if (candidate / ANNOTATIONS_FILE).is_file():
        return candidate.resolve()
    if origin is not None:
        logger.warning(
            "real-photo set not found at %s (%s): no %s there; the real-photo split is skipped",
            candidate,
            origin,
            ANNOTATIONS_FILE,
        )
    return None


def limb_indices(format_name: str, joint_names: Sequence[str]) -> tuple[int, ...]:
    """For each of `LIMB_JOINTS`, its index in a format whose joints are `joint_names`.

    Raises ValueError if the format is unknown or lacks one of the joints.
    """
    try:
        source_names = LIMB_SOURCE_NAMES[format_name]
    except KeyError:
        raise ValueError(
            f"no limb-joint mapping for keypoint format {format_name!r}; known formats: "
            f"{tuple(LIMB_SOURCE_NAMES)} (add it to LIMB_SOURCE_NAMES)"
        ) from None
    missing = [n for n in source_names if n not in joint_names]
    if missing:
        raise ValueError(
            f"keypoint format {format_name!r} has no joints {missing}; its joints: "
            f"{tuple(joint_names)}. Update LIMB_SOURCE_NAMES to the names in {ANNOTATIONS_FILE}"
        )
    return tuple(list(joint_names).index(n) for n in source_names)


def _limb2d(keypoints: dict[str, Any], formats: dict[str, list[str]]) -> np.ndarray:
    """{"format", "array": (K, 3) [x, y, flag]} -> (12, 3) [x, y, labelled]."""
    fmt = keypoints["format"]
    array = np.asarray(keypoints["array"], dtype=np.float64)
    if array.shape != (len(formats[fmt]), 3):
        raise ValueError(f"keypoints_2d in format {fmt!r} must be ({len(formats[fmt])}, 3)")
    limb = array[list(limb_indices(fmt, formats[fmt]))]
    # Flags 1 (labelled, occluded) and 2 (labelled, visible) both mean "labelled".
    limb[:, 2] = (limb[:, 2] > 0).astype(np.float64)
    return limb


def _limb3d(keypoints: dict[str, Any], formats: dict[str, list[str]]) -> np.ndarray:
    """{"format", "units": "m", "array": (K, 4) [X, Y, Z, conf]} -> (12, 3) metres."""
    fmt = keypoints["format"]
    if keypoints.get("units", "m") != "m":
        raise ValueError(f"keypoints_3d_camera must be in metres, got {keypoints['units']!r}")
    limb = np.asarray(keypoints["array"], dtype=np.float64)[list(limb_indices(fmt, formats[fmt]))]
    if (limb[:, 3] <= 0).any():
        raise ValueError("keypoints_3d_camera has limb joints with confidence 0")
    return limb[:, :3]


def _person(entry: dict[str, Any], formats: dict[str, list[str]]) -> RealPerson:
    x, y, w, h = entry["bbox_xywh"]
    limb3d, camera = None, None
    if "keypoints_3d_camera" in entry:
        limb3d = _limb3d(entry["keypoints_3d_camera"], formats)
        cam = entry["camera"]
        camera = Pinhole(float(cam["fx"]), float(cam["fy"]), float(cam["cx"]), float(cam["cy"]))
    return RealPerson(
        bbox_xyxy=np.array([x, y, x + w, y + h], dtype=np.float64),
        limb2d=_limb2d(entry["keypoints_2d"], formats),
        limb3d=limb3d,
        camera=camera,
        source_format=entry["keypoints_2d"]["format"],
    )


def _image(entry: dict[str, Any], root: Path, formats: dict[str, list[str]]) -> RealImage:
    path = (root / entry["file"]).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"{ANNOTATIONS_FILE} lists {entry['file']} but {path} does not exist; "
            "restore the set's images/ folder"
        )
    if entry["kind"] not in KINDS:
        raise ValueError(f"{entry['file']}: kind {entry['kind']!r} is not one of {KINDS}")
    return RealImage(
        path=path,
        width=int(entry["width"]),
        height=int(entry["height"]),
        kind=entry["kind"],
        people=tuple(_person(p, formats) for p in entry.get("people", [])),
        dataset=entry.get("dataset", ""),
        licence_class=entry.get("licence_class", ""),
    )


def load_realdata(root: Path) -> RealSet:
    """Read ``root/annotations.json`` into a `RealSet` (image paths absolute).

    Raises FileNotFoundError (saying where it looked) if the folder, the json or an image is
    missing, ValueError if a keypoint format lacks a limb joint.
    """
    root = Path(root)
    annotations = root / ANNOTATIONS_FILE
    if not annotations.is_file():
        raise FileNotFoundError(
            f"real-photo set not found: no {ANNOTATIONS_FILE} at {annotations}; the real-photo "
            f"split is skipped. Point ${REALDATA_ENV} (or the explicit path) at the realdata "
            "folder to evaluate on it"
        )
    data = json.loads(annotations.read_text())
    formats: dict[str, list[str]] = data["keypoint_formats"]
    for name, joints in formats.items():
        limb_indices(name, joints)  # fail on a format we cannot map before reading any person
    images = tuple(_image(entry, root.resolve(), formats) for entry in data["images"])
    return RealSet(images=images, root=root.resolve())


def read_image(path: str | Path) -> np.ndarray:
    """The image at `path` as (H, W, 3) uint8 RGB (palette, grayscale and alpha converted).

    No EXIF rotation is applied: the labels are in the stored pixel grid.
    """
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Predictions


@dataclass(frozen=True)
class PersonPrediction:
    """What a model gives for one person.

    bbox_xyxy: (4,) pixels, the box the model worked in.
    keypoints2d: (12, 3) [x, y, confidence] pixels, the limb joints of the keypoints the model
        used (the labels when they were sent, else the ones it found).
    body2d: (12, 2) pixels, the fitted body's limb joints projected into the image.
    joints3d: (12, 3) metres, the fitted body's limb joints in the camera frame (any root
        offset), or None when the model gives no 3D.
    """

    bbox_xyxy: np.ndarray
    keypoints2d: np.ndarray
    body2d: np.ndarray
    joints3d: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bbox_xyxy", _frozen_array(self.bbox_xyxy, (4,), "bbox_xyxy"))
        object.__setattr__(
            self,
            "keypoints2d",
            _frozen_array(self.keypoints2d, (NUM_LIMB_JOINTS, 3), "keypoints2d"),
        )
        object.__setattr__(
            self, "body2d", _frozen_array(self.body2d, (NUM_LIMB_JOINTS, 2), "body2d")
        )
        if self.joints3d is not None:
            object.__setattr__(
                self, "joints3d", _frozen_array(self.joints3d, (NUM_LIMB_JOINTS, 3), "joints3d")
            )


PredictWithBoxes = Callable[[RealImage, list[RealPerson], bool], list[PersonPrediction]]
PredictWithoutBoxes = Callable[[RealImage], list[PersonPrediction]]
