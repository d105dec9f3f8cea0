"""The real-photo split run through each method (ARCHITECTURE §6): `evaluate_real`.

Per image and method, the way the worker serves it: the people's boxes (labelled, or found by
BlazePose's detector when none are sent) -> CLIFF crops -> BlazePose's landmarks -> f_w's
features (BlazePose's output vector, or the image backbone of an older model) -> regression,
then the method's TTO against the keypoints (the labelled limb joints, or BlazePose's own
COCO-17 keypoints) for the reference 14 steps. `training.realdata_scores.score` compares the fitted
bodies with the labels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.backbones import is_landmark_backbone
from model.body import BodyModel
from model.keypoints import get_format
from model.outputs import CropInfo, RegressorOutput
from training.realdata import (
    LIMB_JOINTS,
    PersonPrediction,
    RealImage,
    RealPerson,
    load_realdata,
    read_image,
)
from training.realdata_scores import RealScores, score

log = logging.getLogger(__name__)

REAL_STEPS = 14
MAX_PEOPLE = 16  # as the worker: people the detector may return for one image
LIMB_INDEX = tuple(get_format("coco17").index(n) for n in LIMB_JOINTS)  # COCO-17 rows


def labelled_keypoints(people: list[RealPerson]) -> np.ndarray:
    """(B, 17, 3) COCO-17 keypoints from the labels: the limb joints, confidence 1 where
    labelled; the face points (not labelled in every format) at confidence 0."""
    out = np.zeros((len(people), 17, 3), np.float32)
    for i, p in enumerate(people):
        out[i, list(LIMB_INDEX)] = p.limb2d
    return out


class RealPredictor:
    """One method on real photos (see the module docstring). `method` is a
    `training.evaluate.Method`; `blazepose` a `model.blazepose.BlazePose`."""

    def __init__(self, method: Any, body: BodyModel, blazepose: Any, steps: int = REAL_STEPS):
        self.method, self.body, self.bp, self.steps = method, body, blazepose, steps
        self.seconds = 0.0
        self._image_cache: dict[str, np.ndarray] = {}

    def _image(self, item: RealImage) -> np.ndarray:
        key = str(item.path)
        if key not in self._image_cache:
            self._image_cache[key] = read_image(item.path)
        return self._image_cache[key]

    def with_boxes(
        self, item: RealImage, people: list[RealPerson], use_labels: bool
    ) -> list[PersonPrediction]:
        boxes = np.stack([p.bbox_xyxy for p in people])
        keypoints = labelled_keypoints(people) if use_labels else None
        return self._predict(self._image(item), boxes, keypoints, None)

    def without_boxes(self, item: RealImage) -> list[PersonPrediction]:
        from model.blazepose import landmark_boxes

        image = self._image(item)
        lm = self.bp.find_people(image, MAX_PEOPLE)
        if len(lm.score) == 0:
            return []
        return self._predict(image, landmark_boxes(lm, image.shape[:2]), None, lm)

    def _predict(
        self, image: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray | None, lm: Any
    ) -> list[PersonPrediction]:
        from model.blazepose import coco17_keypoints, head_features, roi_from_cliff_boxes
        from model.crop import box_from_xyxy, crop_image

        m = self.method
        crop_hw = m.f_w.config.crop_hw
        center, size = box_from_xyxy(boxes, out_hw=crop_hw)  # CLIFF's 1.2 margin, as the worker
        h, w = image.shape[:2]
        b = len(boxes)
        crop = CropInfo.from_boxes(
            torch.as_tensor(center, dtype=torch.float32), torch.as_tensor(size, dtype=torch.float32),
            torch.tensor([[h, w]], dtype=torch.float32).repeat(b, 1), crop_hw=crop_hw,
        )  # fmt: skip
        if lm is None:
            lm = self.bp.landmarks(image, roi_from_cliff_boxes(center, size))
        kp = coco17_keypoints(lm) if keypoints is None else keypoints
        start = time.perf_counter()
        if is_landmark_backbone(m.f_w.config.backbone.name):
            images = torch.from_numpy(head_features(lm, center, size))
        else:
            from training.batches import network_input

            cuts = np.stack([crop_image(image, c, float(s), crop_hw)[0] for c, s in zip(center, size, strict=True)])
            images = network_input(torch.from_numpy(cuts).permute(0, 3, 1, 2).float() / 255.0, crop_hw)
        with torch.no_grad():
            feats = m.f_w.backbone(images)
        pred = self._fit(images, feats, crop, torch.from_numpy(kp))
        self.seconds += time.perf_counter() - start
        from model.losses import project_points

        with torch.no_grad():
            out = self.body.keypoints_only(pred.params)  # body frame; PA-MPJPE aligns it
            px = project_points(out.coco17, pred.translation(crop), crop)
        limbs = list(LIMB_INDEX)
        return [
            PersonPrediction(
                bbox_xyxy=boxes[i], keypoints2d=kp[i, limbs].astype(np.float64),
                body2d=px[i, limbs].double().numpy(), joints3d=out.coco17[i, limbs].double().numpy(),
            )  # fmt: skip
            for i in range(b)
        ]

    def _fit(
        self, images: torch.Tensor, feats: torch.Tensor, crop: CropInfo, keypoints: torch.Tensor
    ) -> RegressorOutput:
        from model.tto import TTOInputs, fit

        m = self.method
        bbox_info = crop.bbox_info()
        with torch.no_grad():
            initial = m.f_w.head(feats, bbox_info)
        if not m.uses_tto or self.steps == 0:
            return initial
        aux = None
        if m.f_u is not None:
            with torch.no_grad():
                aux = m.f_u(images, bbox_info)
        inputs = TTOInputs(keypoints, crop, "coco17", images=images, features=feats)
        config = replace(m.ckpt.tto, scope="head", steps=self.steps, use_aux=aux is not None)
        return fit(m.f_w, inputs, self.body, config, aux=aux).final


def evaluate_real(
    root: str | Path, methods: list[Any], body: BodyModel, variant: str = "full",
    steps: int = REAL_STEPS,
) -> tuple[dict[str, RealScores], dict[str, float]]:
    """Each method's `RealScores` on the real set at `root`, and its fit time per person (ms).

    Raises FileNotFoundError when the set is missing (the caller skips the split)."""
    from model.blazepose import BlazePose

    realset = load_realdata(Path(root))
    bp = BlazePose(variant, threads=torch.get_num_threads())
    scores, timing = {}, {}
    for method in methods:
        pred = RealPredictor(method, body, bp, steps)
        scores[method.name] = score(realset, pred.with_boxes, pred.without_boxes)
        people = 3 * realset.num_people  # labelled, built-in, and found without boxes (about)
        timing[method.name] = round(1000 * pred.seconds / max(people, 1), 2)
        log.info("real split, %s: %s", method.name, scores[method.name].to_json())
    return scores, timing
