"""The real-photo split of `metahmr eval`: loading the set and scoring predictions.

The set (``shared/realdata``, see its README) is 25 real photographs: 11 with hand-made 2D
keypoints (``2d_keypoints``), 8 Human3.6M frames with mocap 3D joints and the camera
(``3d_gt``), 6 multi-person photos without labels (``unannotated``). Every source format is
reduced to the 12 `LIMB_JOINTS`, the joints all six formats share, by joint name
(`LIMB_SOURCE_NAMES`).

Nothing here knows the model. The caller turns images into `PersonPrediction`s, one per
person; `score` compares them with the labels:

- limb error: per person, the mean pixel distance over the labelled limb joints divided by the
  person's box height (`limb_error`); reported over people as median (the headline), mean and
  the fraction under `GOOD_LIMB_ERROR`. It is measured for the fitted body's projected joints
  and, when the model found its own keypoints, for those keypoints;
- PA-MPJPE (mm) of the 12 limb joints on the ``3d_gt`` people (`pa_mpjpe`);
- recall of people when no boxes are sent (`match_people`).

The labels come in two kinds of keypoint source: ``labelled`` (the annotations are sent to the
model as its keypoints) and ``builtin`` (the model finds its own).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from training.metrics import pa_mpjpe as _pa_mpjpe_batch

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


# ---------------------------------------------------------------------------------------------
# Metrics


def limb_error(pred_xy: np.ndarray, gt: np.ndarray, box_height: float) -> float | None:
    """Mean distance over the labelled joints, as a fraction of the box height.

    pred_xy: (K, 2) pixels. gt: (K, 3) [x, y, labelled] pixels (K = 12 for `LIMB_JOINTS`).
    box_height: pixels, > 0. Returns None when no joint is labelled.
    """
    pred_xy, gt = np.asarray(pred_xy, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred_xy.ndim != 2 or pred_xy.shape[1] != 2 or gt.shape != (pred_xy.shape[0], 3):
        raise ValueError(
            f"limb_error: pred_xy must be (K, 2) and gt (K, 3), got {pred_xy.shape} and {gt.shape}"
        )
    if not box_height > 0:
        raise ValueError(f"limb_error: box_height must be > 0 pixels, got {box_height}")
    labelled = gt[:, 2] > 0
    if not labelled.any():
        return None
    dist = np.linalg.norm(pred_xy[labelled] - gt[labelled, :2], axis=-1)
    return float(dist.mean() / box_height)


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean joint error (mm) after the similarity Procrustes alignment of pred onto gt.

    pred, gt: (J, 3) metres (J = 12 for `LIMB_JOINTS`). Uses `training.metrics.pa_mpjpe`
    (float64), so real photos and the synthetic splits share one definition.
    """
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 2 or pred.shape[1] != 3:
        raise ValueError(f"pa_mpjpe: pred and gt must both be (J, 3), got {pred.shape}, {gt.shape}")
    return float(_pa_mpjpe_batch(torch.tensor(pred[None]), torch.tensor(gt[None]))[0])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU. a: (N, 4), b: (M, 4) [x0, y0, x1, y1] -> (N, M) in [0, 1]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_people(
    preds: Sequence[np.ndarray], gts: Sequence[RealPerson], min_iou: float = MATCH_IOU
) -> list[int | None]:
    """For each labelled person, the index of the prediction box matched to it, or None.

    preds: boxes (4,) [x0, y0, x1, y1] of the people a model found without being given boxes.
    The rule: one-to-one, greedy by box IoU (highest pair first, ties to the lower index), a
    pair only when IoU >= `min_iou`. Predictions left unmatched are not counted against the
    model anywhere: PoseTrack and LSPET label one person among several visible, so a box on an
    unlabelled person is not a false positive, and it only takes a labelled person's match when
    it overlaps that person's box better than any other box does. IoU rather than "labelled
    joints inside the box" because the latter lets one oversized box (a crowd) claim everyone.
    """
    result: list[int | None] = [None] * len(gts)
    if not preds or not gts:
        return result
    iou = box_iou(np.stack([np.asarray(p) for p in preds]), np.stack([g.bbox_xyxy for g in gts]))
    order = np.argsort(-iou, axis=None, kind="stable")
    used = set()
    for flat in order:
        p, g = np.unravel_index(flat, iou.shape)
        if iou[p, g] < min_iou:
            break
        if p in used or result[g] is not None:
            continue
        used.add(p)
        result[g] = int(p)
    return result


# ---------------------------------------------------------------------------------------------
# Scores


def _stat(values: Sequence[float], reduce: Callable[[np.ndarray], Any]) -> float | None:
    return float(reduce(np.asarray(values, dtype=np.float64))) if values else None


@dataclass(frozen=True)
class LimbErrorStats:
    """Limb errors (fraction of box height) over n people: median, mean, fraction under
    `GOOD_LIMB_ERROR`; None when n = 0."""

    n: int
    median: float | None
    mean: float | None
    under_0_10: float | None

    @staticmethod
    def of(errors: Sequence[float]) -> LimbErrorStats:
        return LimbErrorStats(
            n=len(errors),
            median=_stat(errors, np.median),
            mean=_stat(errors, np.mean),
            under_0_10=_stat(errors, lambda e: (e < GOOD_LIMB_ERROR).mean()),
        )


@dataclass(frozen=True)
class MmStats:
    """A 3D error (mm) over n people: median and mean; None when n = 0."""

    n: int
    median: float | None
    mean: float | None

    @staticmethod
    def of(errors: Sequence[float]) -> MmStats:
        return MmStats(n=len(errors), median=_stat(errors, np.median), mean=_stat(errors, np.mean))


@dataclass(frozen=True)
class SourceScores:
    """Scores for one keypoint source.

    n_people: labelled people scored. keypoint: the model's own keypoints against the labels
    (``builtin`` only, None for ``labelled``). body: the fitted body's projected joints against
    the labels. pa_mpjpe: over the ``3d_gt`` people whose prediction has 3D joints.
    """

    source: KeypointSource
    n_people: int
    keypoint: LimbErrorStats | None
    body: LimbErrorStats
    pa_mpjpe: MmStats


@dataclass(frozen=True)
class Recall:
    """People found without boxes: `found` of the `eligible` labelled people (those with at
    least `RECALL_MIN_LABELLED` labelled limb joints) got a match (`match_people`);
    `unannotated_people_found` is how many people the model found in ``unannotated`` photos
    (no labels to score them against)."""

    found: int
    eligible: int
    unannotated_people_found: int

    @property
    def value(self) -> float | None:
        return self.found / self.eligible if self.eligible else None


@dataclass(frozen=True)
class RealScores:
    """Everything `score` measures; `to_json` gives plain numbers."""

    labelled: SourceScores
    builtin: SourceScores
    recall: Recall | None = None

    def source(self, name: KeypointSource) -> SourceScores:
        return self.labelled if name == "labelled" else self.builtin

    def to_json(self) -> dict[str, Any]:
        """{"labelled": {...}, "builtin": {...}, "recall": {...} | None}: ints, floats, None."""

        def stats(s: LimbErrorStats | MmStats | None) -> dict[str, Any] | None:
            return None if s is None else dict(vars(s))

        out: dict[str, Any] = {
            s.source: {
                "n_people": s.n_people,
                "keypoint": stats(s.keypoint),
                "body": stats(s.body),
                "pa_mpjpe": stats(s.pa_mpjpe),
            }
            for s in (self.labelled, self.builtin)
        }
        out["recall"] = (
            None
            if self.recall is None
            else {
                "recall": self.recall.value,
                "found": self.recall.found,
                "eligible": self.recall.eligible,
                "unannotated_people_found": self.recall.unannotated_people_found,
            }
        )
        return out


@dataclass
class _Errors:
    """Per-person errors of one keypoint source, collected image by image."""

    n_people: int = 0
    keypoint: list[float] = field(default_factory=list)
    body: list[float] = field(default_factory=list)
    pa_mpjpe: list[float] = field(default_factory=list)


def _annotated(realset: RealSet) -> list[RealImage]:
    return [im for im in realset.images if im.kind != "unannotated" and im.people]


def _score_source(
    realset: RealSet, predict: PredictWithBoxes, source: KeypointSource
) -> SourceScores:
    """Predict every labelled person with its box given, and compare with the labels."""
    errors = _Errors()
    for image in _annotated(realset):
        people = list(image.people)
        preds = predict(image, people, source == "labelled")
        if len(preds) != len(people):
            raise ValueError(
                f"predict_with_boxes returned {len(preds)} predictions for {len(people)} people "
                f"in {image.path.name}; it must return one per given person, in order"
            )
        for person, pred in zip(people, preds, strict=True):
            errors.n_people += 1
            body = limb_error(pred.body2d, person.limb2d, person.box_height)
            if body is not None:
                errors.body.append(body)
            if source == "builtin":
                kp = limb_error(pred.keypoints2d[:, :2], person.limb2d, person.box_height)
                if kp is not None:
                    errors.keypoint.append(kp)
            if person.limb3d is not None and pred.joints3d is not None:
                errors.pa_mpjpe.append(pa_mpjpe(pred.joints3d, person.limb3d))
    return SourceScores(
        source=source,
        n_people=errors.n_people,
        keypoint=LimbErrorStats.of(errors.keypoint) if source == "builtin" else None,
        body=LimbErrorStats.of(errors.body),
        pa_mpjpe=MmStats.of(errors.pa_mpjpe),
    )


def _recall(realset: RealSet, predict: PredictWithoutBoxes) -> Recall:
    found = eligible = unannotated = 0
    for image in realset.images:
        preds = predict(image)
        if image.kind == "unannotated":
            unannotated += len(preds)
            continue
        matches = match_people([p.bbox_xyxy for p in preds], image.people)
        for person, match in zip(image.people, matches, strict=True):
            if person.num_labelled >= RECALL_MIN_LABELLED:
                eligible += 1
                found += match is not None
    return Recall(found=found, eligible=eligible, unannotated_people_found=unannotated)


def score(
    realset: RealSet,
    predict_with_boxes: PredictWithBoxes,
    predict_without_boxes: PredictWithoutBoxes | None = None,
) -> RealScores:
    """Score a model on the real set.

    predict_with_boxes(image, people, use_labels) -> one `PersonPrediction` per given person,
    in order; use_labels=True means the labelled keypoints are to be sent to the model, False
    that it uses its own. Called twice per annotated image (``labelled``, ``builtin``), never
    for ``unannotated`` ones. predict_without_boxes(image) -> the people the model finds on
    its own; when given, it is called for every image and `RealScores.recall` is filled.
    Every labelled joint counts in the keypoint error, whatever confidence the model gave it.
    """
    return RealScores(
        labelled=_score_source(realset, predict_with_boxes, "labelled"),
        builtin=_score_source(realset, predict_with_boxes, "builtin"),
        recall=None if predict_without_boxes is None else _recall(realset, predict_without_boxes),
    )


# ---------------------------------------------------------------------------------------------
# Report

_SOURCE_TITLES = {
    "labelled": "labelled keypoints sent to the model",
    "builtin": "the model's built-in keypoints",
}


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _row(method: str, s: SourceScores) -> str:
    kp = _fmt(s.keypoint.median, 3) if s.keypoint is not None else "–"
    pa = f"{_fmt(s.pa_mpjpe.median, 1)} / {_fmt(s.pa_mpjpe.mean, 1)} (n={s.pa_mpjpe.n})"
    return (
        f"| {method} | {s.n_people} | {kp} | {_fmt(s.body.median, 3)} "
        f"| {_fmt(s.body.under_0_10, 3)} | {pa} |"
    )


def _recall_line(scores_by_method: dict[str, RealScores]) -> str:
    parts = []
    for method, scores in scores_by_method.items():
        r = scores.recall
        if r is not None:
            parts.append(
                f"{method} {r.found}/{r.eligible} ({_fmt(r.value, 3)}), "
                f"{r.unannotated_people_found} people in the unannotated photos"
            )
    if not parts:
        return "Recall without boxes: not measured."
    return (
        f"Recall without boxes (labelled people with >= {RECALL_MIN_LABELLED} labelled limb "
        f"joints matched by a found box at IoU >= {MATCH_IOU}): " + "; ".join(parts) + "."
    )


def markdown_section(scores_by_method: dict[str, RealScores]) -> str:
    """Markdown tables, one per keypoint source with one row per method, and a recall line.

    Errors are `limb_error`s (fraction of box height, 3 decimals), PA-MPJPE in mm (1 decimal).
    """
    lines = [
        "Limb error: per person, the mean distance over the labelled limb joints divided by the "
        "box height; median over people. PA-MPJPE over the 12 limb joints of the Human3.6M "
        "frames.",
        "",
    ]
    for source in KEYPOINT_SOURCES:
        lines += [
            f"**Keypoints: {_SOURCE_TITLES[source]}**",
            "",
            "| method | people | keypoint err (median) | body err (median) "
            f"| body < {GOOD_LIMB_ERROR:.2f} | PA-MPJPE median / mean (mm) |",
            "|---|---|---|---|---|---|",
            *(_row(m, s.source(source)) for m, s in scores_by_method.items()),
            "",
        ]
    lines.append(_recall_line(scores_by_method))
    return "\n".join(lines) + "\n"
