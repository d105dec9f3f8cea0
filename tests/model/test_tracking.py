"""Tracking: Hungarian matching on IoU + keypoints, birth and death, ids through a crossing."""

from __future__ import annotations

import numpy as np
import pytest

from model.tracking import Tracker, TrackerConfig, box_iou, keypoint_distance, track_frames
from training.synth.motion import MotionConfig, make_clip


def test_box_iou_of_known_boxes() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]], float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], float)
    iou = box_iou(a, b)
    assert iou.shape == (2, 2)
    assert iou[0, 0] == pytest.approx(50 / 150)
    assert iou[0, 1] == 0.0 and iou[1, 1] == 0.0


def test_keypoint_distance_ignores_unseen_points_and_scales_by_height() -> None:
    a = np.zeros((1, 17, 3))
    a[..., 2] = 1.0
    b = a.copy()
    b[0, :, 0] += 10.0
    b[0, 0, :2] = 1e4  # far off, but unseen on one side
    b[0, 0, 2] = 0.0
    d = keypoint_distance(a, b, np.array([100.0]), 0.3)
    assert d.shape == (1, 1) and d[0, 0] == pytest.approx(0.1)
    none_seen = keypoint_distance(a, np.zeros((2, 17, 3)), np.array([100.0]), 0.3)
    assert none_seen.tolist() == [[1.0, 1.0]]


def test_births_and_deaths() -> None:
    tracker = Tracker(TrackerConfig(max_missed=2))
    assert tracker.update(0, np.array([[0, 0, 10, 20]])) == [0]
    # A far-away box is someone else: a birth.
    assert tracker.update(1, np.array([[1, 0, 11, 20], [100, 100, 110, 120]])) == [0, 1]
    for frame in (2, 3, 4):  # track 1 misses three frames (> max_missed): it dies
        assert tracker.update(frame, np.array([[frame, 0, 10 + frame, 20]])) == [0]
    assert tracker.update(5, np.array([[100, 100, 110, 120]])) == [2]
    assert tracker.update(6, np.empty((0, 4))) == []


def test_keypoints_must_match_the_boxes() -> None:
    with pytest.raises(ValueError, match="keypoints must be"):
        Tracker().update(0, np.zeros((2, 4)), np.zeros((3, 17, 3)))


@pytest.fixture(scope="module")
def crossing():
    return make_clip(MotionConfig(frames=45, image_hw=(120, 160), scene="crossing"), seed=3)


def test_two_people_crossing_keep_their_ids(crossing) -> None:
    """Detections as a detector would give them: noisy boxes and keypoints, the hidden
    person missing while mostly covered, and the order within a frame shuffled."""
    rng = np.random.default_rng(0)
    a, b = crossing.people
    full = [int(np.median(p.visible)) for p in crossing.people]
    # The two must really cross: their horizontal order flips and one hides the other.
    ca, cb = (a.bbox[:, 0] + a.bbox[:, 2]) / 2, (b.bbox[:, 0] + b.bbox[:, 2]) / 2
    assert np.sign(ca[0] - cb[0]) != np.sign(ca[-1] - cb[-1])
    assert (b.visible < 0.4 * full[1]).any()
    boxes, kps, who = [], [], []
    for t in range(crossing.config.frames):
        people = [k for k, p in enumerate(crossing.people) if p.visible[t] >= 0.4 * full[k]]
        rng.shuffle(people)
        h = np.array([crossing.people[k].bbox[t, 3] - crossing.people[k].bbox[t, 1] for k in people])
        boxes.append(np.array([crossing.people[k].bbox[t] for k in people]).reshape(-1, 4)
                     + rng.normal(0, 0.03, (len(people), 4)) * np.repeat(h, 4).reshape(-1, 4))
        kp = np.array([crossing.people[k].coco17[t] for k in people]).reshape(-1, 17, 3).copy()
        kp[..., :2] += rng.normal(0, 0.03, kp[..., :2].shape) * h.reshape(-1, 1, 1)
        kps.append(kp)
        who.append(people)
    ids = track_frames(boxes, kps)
    pairs = {(k, tid) for frame_who, frame_ids in zip(who, ids, strict=True)
             for k, tid in zip(frame_who, frame_ids, strict=True)}
    assert pairs == {(0, 0), (1, 1)} or pairs == {(0, 1), (1, 0)}
