"""Scoring the real-photo split (`training.realdata`): limb errors, PA-MPJPE, recall, and
the markdown section `metahmr eval` writes.

`score` compares a model's `PersonPrediction`s with the set's labels:

- limb error: per person, the mean pixel distance over the labelled limb joints divided by the
  person's box height (`limb_error`); reported over people as median (the headline), mean and
  the fraction under `GOOD_LIMB_ERROR`. It is measured for the fitted body's projected joints
  and, when the model found its own keypoints, for those keypoints;
- PA-MPJPE (mm) of the 12 limb joints on the ``3d_gt`` people (`pa_mpjpe`);
- recall of people when no boxes are sent (`match_people`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.metrics import pa_mpjpe as _pa_mpjpe_batch
from training.realdata import (
    GOOD_LIMB_ERROR,
    KEYPOINT_SOURCES,
    MATCH_IOU,
    RECALL_MIN_LABELLED,
    KeypointSource,
    PredictWithBoxes,
    PredictWithoutBoxes,
    RealImage,
    RealPerson,
    RealSet,
)

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
