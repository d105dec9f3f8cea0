"""BlazePose: the ROI geometry, the detector's decoding, and the real networks on renders and
(when ../shared/realdata is there) on real photographs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model import blazepose as bp

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "img" / "example.jpg"
EXAMPLE_KEYPOINTS = REPO / "docs" / "img" / "example_keypoints.json"


@pytest.fixture(scope="module")
def blazepose() -> bp.BlazePose:
    return bp.BlazePose("full", threads=1)


def _example() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    image = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    data = json.loads(EXAMPLE_KEYPOINTS.read_text())
    points = data["points"] if isinstance(data, dict) else data
    return image, np.asarray(points, np.float64)


def test_ssd_anchors_match_the_detector_output_count():
    anchors = bp.ssd_anchors()
    assert anchors.shape == (2254, 2)
    assert (anchors > 0).all() and (anchors < 1).all()
    # The first grid is 28x28 with two anchors per cell, at cell centres.
    np.testing.assert_allclose(anchors[0], [0.5 / 28, 0.5 / 28])
    np.testing.assert_allclose(anchors[1], anchors[0])


def test_roi_affine_and_crop_to_image_are_inverse():
    roi = bp.Roi(np.array([[100.0, 200.0], [50.0, 60.0]]), np.array([80.0, 30.0]),
                 np.array([0.3, -1.2]))  # fmt: skip
    pts = np.random.default_rng(0).uniform(0, 1, (2, 7, 2))
    image_px = bp._crop_to_image(pts, roi)
    a = roi.affine(256)
    back = np.einsum("bij,bkj->bki", a[:, :, :2], image_px) + a[:, None, :, 2]
    np.testing.assert_allclose(back / 256, pts, atol=1e-9)


def test_roi_from_points_turns_the_body_upright():
    center = np.array([[100.0, 100.0], [100.0, 100.0]])
    scale_pt = np.array([[100.0, 50.0], [150.0, 100.0]])  # straight up; to the right
    roi = bp.roi_from_points(center, scale_pt, scale=1.0)
    np.testing.assert_allclose(roi.angle, [0.0, np.pi / 2], atol=1e-12)
    np.testing.assert_allclose(roi.size, [100.0, 100.0])
    # In the crop, the scale point sits straight above the centre.
    a = roi.affine(256)
    crop_pt = np.einsum("bij,bj->bi", a[:, :, :2], scale_pt) + a[:, :, 2]
    np.testing.assert_allclose(crop_pt, [[128.0, 0.0], [128.0, 0.0]], atol=1e-9)


def test_warp_cuts_the_roi_pixels():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 140:160] = 255  # a white square centred at (149.5, 49.5)
    roi = bp.roi_from_boxes(np.array([[140.0, 40.0, 159.0, 59.0]]), scale=2.0)
    crop = bp.warp(image, roi.affine(64), 64)[0]
    assert crop.shape == (64, 64, 3)
    assert crop[32, 32].min() > 0.99  # the centre is white
    assert crop[2, 2].max() < 0.01  # the margin is black
    white = np.argwhere(crop[..., 0] > 0.5)
    np.testing.assert_allclose(white.mean(0), [31.5, 31.5], atol=1.0)


def test_letterbox_maps_pixels_to_the_square():
    image = np.zeros((100, 200, 3), np.uint8)
    image[69:72, 29:32] = 255  # a 3x3 white block centred at (30, 70)
    square, scale, offset = bp.letterbox(image, 224)
    assert square.shape == (224, 224, 3) and square.min() >= -1.0 and square.max() <= 1.0
    np.testing.assert_allclose(scale, [224 / 200, 112 / 100])
    x, y = np.array([30.0, 70.0]) * scale + offset
    bright = np.argwhere(square[..., 0] > 0.5)  # the white block, resampled
    assert len(bright) > 0
    np.testing.assert_allclose(bright.mean(0), [y, x], atol=1.0)


def test_decode_detections_merges_overlapping_candidates():
    anchors = bp.ssd_anchors() * bp.DETECTOR_INPUT
    raw = np.zeros((2254, 12))
    raw[:, 2:4] = 40.0  # 40-pixel boxes on every anchor
    logits = np.full((2254, 1), -20.0)
    # Two anchors next to each other (one person) and one far away (another).
    near = np.argsort(np.hypot(*(anchors - [100.0, 100.0]).T))[:2]
    far = int(np.argmin(np.hypot(*(anchors - [200.0, 30.0]).T)))
    logits[near, 0], logits[far, 0] = [3.0, 2.0], 1.0
    boxes, keypoints, scores = bp.decode_detections(raw, logits)
    assert len(scores) == 2
    assert scores[0] == pytest.approx(1 / (1 + np.exp(-3.0)))
    centre = (boxes[0, :2] + boxes[0, 2:]) / 2
    assert np.hypot(*(centre - [100.0, 100.0])) < 8.0
    assert keypoints.shape == (2, 4, 2)


def test_model_path_says_how_to_get_a_missing_variant(tmp_path):
    with pytest.raises(bp.BlazePoseUnavailable, match="metahmr assets blazepose"):
        bp.model_path("heavy", tmp_path)
    with pytest.raises(ValueError, match="valid"):
        bp.model_path("huge")


def test_landmarks_of_a_render_land_on_its_keypoints(blazepose):
    image, gt = _example()
    labelled = gt[:, 2] > 0
    xy = gt[labelled, :2]
    box = np.concatenate([xy.min(0), xy.max(0)])
    lm = blazepose.landmarks(image, bp.roi_from_boxes(box[None]))
    assert lm.image.shape == (1, 33, 3) and lm.world.shape == (1, 33, 3)
    assert lm.score[0] > 0.5
    coco = bp.coco17_keypoints(lm)[0]
    height = box[3] - box[1]
    limbs = labelled.copy()
    limbs[:5] = False  # face points: the render's eyes/ears are approximate
    err = np.linalg.norm(coco[limbs, :2] - gt[limbs, :2], axis=1).mean() / height
    assert err < 0.06
    # World landmarks are metres, hip-centred: the hips straddle the origin.
    hips = lm.world[0, [23, 24]]
    assert np.linalg.norm(hips.mean(0)) < 0.05 and 0.1 < np.linalg.norm(hips[0] - hips[1]) < 0.5


def test_detector_finds_the_person_in_a_render(blazepose):
    image, gt = _example()
    found = blazepose.detect_people(image)
    assert len(found.scores) >= 1
    xy = gt[gt[:, 2] > 0, :2]
    x0, y0, x1, y1 = found.boxes[0]
    inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
    assert inside.mean() > 0.8


def test_head_features_are_the_landmarks_in_box_coordinates(blazepose):
    image, gt = _example()
    xy = gt[gt[:, 2] > 0, :2]
    center = (xy.min(0) + xy.max(0)) / 2
    size = float((xy.max(0) - xy.min(0)).max() * 1.2)
    lm = blazepose.landmarks(image, bp.roi_from_cliff_boxes(center[None], np.array([size])))
    feats = bp.head_features(lm, center[None], np.array([size]))
    assert feats.shape == (1, bp.FEATURE_DIM) and feats.dtype == np.float32
    n = bp.NUM_LANDMARKS
    np.testing.assert_allclose(
        feats[0, : 2 * n].reshape(n, 2), (lm.image[0, :, :2] - center) / (size / 2), rtol=1e-5
    )
    np.testing.assert_allclose(feats[0, -1], lm.score[0], rtol=1e-6)


def test_landmark_boxes_cover_the_landmarks(blazepose):
    image, _ = _example()
    found = blazepose.detect_people(image)
    lm = blazepose.landmarks(image, found.roi.select([0]))
    box = bp.landmark_boxes(lm, image.shape[:2])[0]
    xy = lm.image[0, :, :2]
    assert (xy[:, 0] >= box[0] - 1).all() and (xy[:, 0] <= box[2] + 1).all()
    assert (xy[:, 1] >= box[1] - 1).all() and (xy[:, 1] <= box[3] + 1).all()
