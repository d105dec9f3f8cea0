"""Stage "people": who is in the image, and their crops.

The request's people (`service.contract.PersonIn`, already validated at the API): a given
box, else the box around the given keypoints; keypoints in any accepted format become
COCO-17 (the fit's format). Without people in the request: everyone BlazePose's person
detector finds (best first, with their landmarks), else the whole image as one person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model.outputs import CropInfo
from service.contract import KeypointsIn, PersonIn
from worker.pipeline import PermanentJobError

FIT_FORMAT = "coco17"  # the keypoint format of the fit and of the result's keypoints_2d
BOX_RESCALE = 1.2  # CLIFF/SPIN's margin around a person's box
# Keypoints stop at the ankles and the face; the body reaches a little beyond them.
KEYPOINT_BOX_PAD = 0.1
MAX_PEOPLE = 16  # people the detector may return for one image


@dataclass(frozen=True)
class Person:
    """One person of a request. bbox: (4,) x0, y0, x1, y1 pixels (given or derived).
    keypoints: (17, 3) COCO-17 [x, y, conf] from the request, or None."""

    bbox: np.ndarray
    keypoints: np.ndarray | None


@dataclass(frozen=True)
class Crops:
    """B crops. images: (B, h, w, 3) uint8. crop: their `CropInfo` (float32)."""

    images: np.ndarray
    crop: CropInfo

    @staticmethod
    def cat(crops: Sequence[Crops]) -> Crops:
        """The crops of several jobs as one batch, in order."""
        if len(crops) == 1:
            return crops[0]
        return Crops(
            np.concatenate([c.images for c in crops]), CropInfo.cat([c.crop for c in crops])
        )


def find_people(
    image: np.ndarray, people_in: Sequence[PersonIn], blazepose: Any, whole_image: bool = True
) -> tuple[list[Person], Any]:
    """The request's people, else everyone BlazePose finds (with their landmarks, else None),
    else the whole image as one person (whole_image=False: nobody, an empty list).
    blazepose: `model.blazepose.BlazePose` or None."""
    height, width = image.shape[:2]
    if people_in or blazepose is None:
        return parse_people(people_in, width, height), None
    from model.blazepose import landmark_boxes

    lm = blazepose.find_people(image, MAX_PEOPLE)
    if len(lm.score) == 0:
        return (parse_people([], width, height) if whole_image else []), None
    return [Person(box, None) for box in landmark_boxes(lm, (height, width))], lm


def parse_people(people: Sequence[PersonIn], width: int, height: int) -> list[Person]:
    """The request's people as arrays; the whole image when empty.

    Raises PermanentJobError for a person without a box and with fewer than two confident
    keypoints (no box can be derived)."""
    if not people:
        return [Person(np.array([0.0, 0.0, width, height]), None)]
    out = []
    for i, p in enumerate(people):
        keypoints = _fit_keypoints(p.keypoints)
        if p.bbox is not None:
            box = np.asarray(p.bbox, dtype=np.float64)
        else:
            assert keypoints is not None  # PersonIn has a bbox, keypoints or both
            box = _box_around(i, keypoints)
        out.append(Person(box, keypoints))
    return out


def _fit_keypoints(keypoints: KeypointsIn | None) -> np.ndarray | None:
    """A request person's keypoints as COCO-17 (17, 3) float32, or None."""
    from model.keypoints import convert_keypoints

    if keypoints is None:
        return None
    points = np.asarray(keypoints.points, dtype=np.float32)
    if keypoints.format == FIT_FORMAT:
        return points
    return np.asarray(convert_keypoints(points, keypoints.format, FIT_FORMAT), dtype=np.float32)


def _box_around(i: int, keypoints: np.ndarray) -> np.ndarray:
    """x0, y0, x1, y1 around the confident keypoints (17, 3), padded to cover the body."""
    xy = keypoints[keypoints[:, 2] > 0, :2]
    if len(xy) < 2:
        raise PermanentJobError(
            f"people[{i}] has no bbox and fewer than two keypoints with confidence > 0; send a bbox"
        )
    lo, hi = xy.min(0), xy.max(0)
    pad = KEYPOINT_BOX_PAD * max(float((hi - lo).max()), 8.0)
    return np.concatenate([lo - pad, hi + pad]).astype(np.float64)


def make_crops(
    image: np.ndarray, people: Sequence[Person], focal: float, crop_hw: tuple[int, int]
) -> Crops:
    """Each person's square box (CLIFF's margin) cut out of `image` at `crop_hw`."""
    from model.crop import box_from_xyxy, crop_image

    boxes = np.stack([p.bbox for p in people])
    center, size = box_from_xyxy(boxes, BOX_RESCALE, crop_hw)
    images = np.stack(
        [crop_image(image, c, float(s), crop_hw)[0] for c, s in zip(center, size, strict=True)]
    )
    h, w = image.shape[:2]
    b = len(people)
    try:
        crop = CropInfo.from_boxes(
            torch.as_tensor(center, dtype=torch.float32),
            torch.as_tensor(size, dtype=torch.float32),
            torch.tensor([[h, w]], dtype=torch.float32).repeat(b, 1),
            torch.full((b,), focal, dtype=torch.float32),
            crop_hw=crop_hw,
        )
    except ValueError as exc:
        raise PermanentJobError(f"cannot crop these people: {exc}") from exc
    return Crops(images, crop)
