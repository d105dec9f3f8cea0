"""Stage "keypoints": each person's 2D keypoints for the fit (COCO-17, full-image pixels)
and where they came from: the request ("request"), else BlazePose's landmarks
("blazepose"), else the export's heatmap detector (older models, when BlazePose is not
installed: "detector"), else none (that person gets no TTO)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.contract import KeypointSource
from worker.runtime import LoadedModel
from worker.stages.people import Crops, Person


def landmarks_for(
    image: np.ndarray,
    people: Sequence[Person],
    crops: Crops,
    model: LoadedModel,
    blazepose: Any,
    landmarks: Any,
) -> Any:
    """BlazePose's `Landmarks` of the people (`landmarks` when the person detector already
    gave them), or None. BlazePose reads the boxes only when something uses what it sees: a
    BlazePose model's features, or a person without keypoints."""
    needed = model.blazepose_variant is not None or any(p.keypoints is None for p in people)
    if landmarks is not None or blazepose is None or not needed:
        return landmarks
    from model.blazepose import roi_from_cliff_boxes

    roi = roi_from_cliff_boxes(crops.crop.center.numpy(), crops.crop.box_size.numpy())
    return blazepose.landmarks(image, roi)


def fit_keypoints(
    image: np.ndarray,
    people: Sequence[Person],
    crops: Crops,
    model: LoadedModel,
    landmarks: Any = None,
) -> tuple[np.ndarray, list[KeypointSource | None]]:
    """(B, 17, 3) COCO-17 keypoints (zeros where none) and each person's source."""
    points = np.zeros((len(people), 17, 3), np.float32)
    sources: list[KeypointSource | None] = [None] * len(people)
    for i, p in enumerate(people):
        if p.keypoints is not None:
            points[i], sources[i] = p.keypoints, "request"
    missing = [i for i, s in enumerate(sources) if s is None]
    if missing and landmarks is not None:
        from model.blazepose import coco17_keypoints

        found = coco17_keypoints(landmarks)
        for i in missing:
            points[i], sources[i] = found[i], "blazepose"
        return points, sources
    if missing and model.detector is not None:
        detected = detect_keypoints(image, crops, missing, model)
        for k, i in enumerate(missing):
            points[i], sources[i] = detected[k], "detector"
    return points, sources


def detect_keypoints(
    image: np.ndarray, crops: Crops, index: list[int], model: LoadedModel
) -> np.ndarray:
    """The export's detector on the people `index`: (len(index), 17, 3) in full-image
    pixels, confidence in [0, 1]."""
    from model.crop import crop_image
    from model.keypoint_detector import crop_to_image

    detector = model.detector
    assert detector is not None
    det_hw = tuple(model.manifest["detector"]["config"]["crop_hw"])
    crop = crops.crop
    if det_hw == model.crop_hw:
        images, affines = crops.images[index], crop.affine[index].double().numpy()
    else:  # a detector trained on another crop size: cut its own crops
        cuts = [
            crop_image(image, crop.center[i].numpy(), float(crop.box_size[i]), det_hw)
            for i in index
        ]
        images = np.stack([c for c, _ in cuts])
        affines = np.stack([a for _, a in cuts])
    found = crop_to_image(detector.predict(images), affines)
    found[..., 2] = np.clip(found[..., 2], 0.0, 1.0)
    return found
