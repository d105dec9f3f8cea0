"""People tracking across video frames: who in frame t is who in frame t - 1.

Each frame's detections (boxes, optionally COCO-17 keypoints) are matched to the live
tracks by the Hungarian algorithm (`scipy.optimize.linear_sum_assignment`) on a cost that
mixes box overlap (1 - IoU), keypoint distance (normalised by the track's box height) and
box-height change. Each track predicts its box one frame ahead with its recent velocity, so
two people walking past each other are told apart by where they are heading, not only by
where they were. A detection no track can take (cost above `max_cost`) starts a track
(birth); a track unmatched for more than `max_missed` frames ends (death).

Pure numpy + scipy; no torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

_BIG = 1e6  # cost of a forbidden pair in the assignment


@dataclass(frozen=True)
class TrackerConfig:
    """iou_weight, keypoint_weight, size_weight: terms of the matching cost; max_cost: pairs
    above it never match; max_missed: frames a track survives unmatched; min_confidence:
    keypoints below it are ignored; max_jump: a gate on centre motion; velocity_smoothing: weight of the newest box motion in
    the track's velocity (0..1)."""

    iou_weight: float = 1.0
    keypoint_weight: float = 1.0
    size_weight: float = 0.5
    max_cost: float = 1.5
    max_missed: int = 15
    min_confidence: float = 0.3
    velocity_smoothing: float = 0.5
    max_jump: float = 1.0  # box centre moves beyond this many box heights never match

    def __post_init__(self) -> None:
        if self.max_missed < 0 or not 0.0 <= self.velocity_smoothing <= 1.0:
            raise ValueError("max_missed must be >= 0 and velocity_smoothing in [0, 1]")


@dataclass
class Track:
    """A live track. box: (4,) x0, y0, x1, y1 at `last_frame`; velocity: (4,) per frame;
    keypoints: (17, 3) at `last_frame` or None."""

    track_id: int
    box: np.ndarray
    keypoints: np.ndarray | None
    last_frame: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    hits: int = 1

    def predicted_box(self, frame: int) -> np.ndarray:
        return self.box + self.velocity * (frame - self.last_frame)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box pair. a: (N, 4), b: (M, 4) as x0, y0, x1, y1. Returns (N, M)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def keypoint_distance(
    a: np.ndarray, b: np.ndarray, scale: np.ndarray, min_confidence: float
) -> np.ndarray:
    """Mean distance between keypoints both sides see, over `scale`.

    a: (N, K, 3), b: (M, K, 3) pixels + confidence; scale: (N,) pixels (e.g. box heights).
    Returns (N, M); pairs with no point seen by both get 1 (as far as a body apart)."""
    seen = (a[:, None, :, 2] >= min_confidence) & (b[None, :, :, 2] >= min_confidence)
    dist = np.linalg.norm(a[:, None, :, :2] - b[None, :, :, :2], axis=-1)
    count = seen.sum(-1)
    mean = np.where(seen, dist, 0.0).sum(-1) / np.maximum(count, 1)
    return np.where(count > 0, mean / np.maximum(scale[:, None], 1e-6), 1.0)


def _heights(boxes: np.ndarray) -> np.ndarray:
    return np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)


class Tracker:
    """Frame-by-frame tracker (see the module docstring). Call `update` once per frame, in
    order; ids count up from 0 in order of birth."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self._next_id = 0

    def cost(self, frame: int, boxes: np.ndarray, keypoints: np.ndarray | None) -> np.ndarray:
        """(tracks, detections) matching cost for detections `boxes` (N, 4) and `keypoints`
        (N, 17, 3) or None."""
        cfg = self.config
        pred = np.stack([t.predicted_box(frame) for t in self.tracks])
        cost = cfg.iou_weight * (1.0 - box_iou(pred, boxes))
        cost += cfg.size_weight * np.abs(np.log(_heights(boxes)[None, :] / _heights(pred)[:, None]))
        centre = lambda b: (b[:, :2] + b[:, 2:]) / 2  # noqa: E731
        jump = np.linalg.norm(centre(pred)[:, None] - centre(boxes)[None], axis=-1) / _heights(pred)[:, None]
        cost = np.where(jump > cfg.max_jump, _BIG, cost)
        if keypoints is not None and cfg.keypoint_weight > 0:
            have = [t.keypoints is not None for t in self.tracks]
            if any(have):
                mine = np.stack([
                    t.keypoints + np.r_[t.velocity[:2] * (frame - t.last_frame), 0.0]
                    if t.keypoints is not None else np.zeros_like(keypoints[0])
                    for t in self.tracks
                ])  # fmt: skip
                dist = keypoint_distance(mine, keypoints, _heights(pred), cfg.min_confidence)
                cost += cfg.keypoint_weight * np.where(np.array(have)[:, None], dist, 0.0)
        return cost

    def update(
        self, frame: int, boxes: np.ndarray, keypoints: np.ndarray | None = None
    ) -> list[int]:
        """Assign ids to this frame's detections. boxes: (N, 4); keypoints: (N, 17, 3) or
        None. Returns N track ids, in the detections' order."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if keypoints is not None:
            keypoints = np.asarray(keypoints, np.float64)
            if keypoints.shape[0] != len(boxes) or keypoints.ndim != 3 or keypoints.shape[-1] != 3:
                raise ValueError(f"keypoints must be (N, K, 3) with N={len(boxes)}, got {keypoints.shape}")
        cfg = self.config
        self.tracks = [t for t in self.tracks if frame - t.last_frame <= cfg.max_missed + 1]
        ids = [-1] * len(boxes)
        if self.tracks and len(boxes):
            cost = self.cost(frame, boxes, keypoints)
            rows, cols = linear_sum_assignment(np.where(cost <= cfg.max_cost, cost, _BIG))
            for r, c in zip(rows, cols, strict=True):
                if cost[r, c] <= cfg.max_cost:
                    self._advance(self.tracks[r], frame, boxes[c], None if keypoints is None else keypoints[c])
                    ids[c] = self.tracks[r].track_id
        for c, tid in enumerate(ids):
            if tid < 0:  # birth
                kp = None if keypoints is None else keypoints[c].copy()
                self.tracks.append(Track(self._next_id, boxes[c].copy(), kp, frame))
                ids[c] = self._next_id
                self._next_id += 1
        return ids

    def _advance(self, track: Track, frame: int, box: np.ndarray, keypoints: np.ndarray | None) -> None:
        step = (box - track.box) / max(frame - track.last_frame, 1)
        a = self.config.velocity_smoothing
        track.velocity = step if track.hits == 1 else a * step + (1.0 - a) * track.velocity
        track.box, track.last_frame, track.hits = box.copy(), frame, track.hits + 1
        track.keypoints = None if keypoints is None else keypoints.copy()


def track_frames(
    boxes: Sequence[np.ndarray],
    keypoints: Sequence[np.ndarray | None] | None = None,
    config: TrackerConfig | None = None,
) -> list[list[int]]:
    """Track ids for every frame's detections. boxes[t]: (N_t, 4); keypoints[t]: (N_t, 17, 3)
    or None. Returns ids[t][i] for detection i of frame t."""
    tracker = Tracker(config)
    kps = keypoints if keypoints is not None else [None] * len(boxes)
    return [tracker.update(t, b, k) for t, (b, k) in enumerate(zip(boxes, kps, strict=True))]
