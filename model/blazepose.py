"""BlazePose GHUM (MediaPipe Pose) as the project's eyes: person detector + landmark network.

The networks are Google's, trained on real photographs, Apache-2.0, and come as TFLite files
inside the pinned `mediapipe==0.10.14` wheel (installed without its dependencies: only the
files are read, the package is never imported) or, for `lite` / `heavy`, from a folder
given by `METAHMR_BLAZEPOSE_DIR` (`model.blazepose_files` finds them). They run in LiteRT
(`ai-edge-litert`, no TensorFlow), frozen: nothing here is trained.

The maths of MediaPipe's graph is written out here, not copied from it:

1. **detect** (`detect_people`): the image letterboxed to 224x224 in [-1, 1]; 2254 SSD
   anchors; per anchor a box and 4 key points (0: mid-hip, 1: a point whose distance and
   direction from the hip give the body's size and tilt, 2/3: the same for the upper body);
   weighted non-maximum suppression. Each detection gives a rotated square region of
   interest (`Roi`) around the whole body.
2. **landmarks** (`BlazePose.landmarks`): each ROI warped to a 256x256 crop in [0, 1]; the
   network returns 39 landmarks (the 33 MediaPipe Pose points + 6 auxiliary ones, unused
   here) as (x, y, z, visibility, presence), a presence score, heatmaps and 39 world
   landmarks (metres, hip-centred, in the ROI's frame). x, y are refined on the heatmap and
   mapped back to full-image pixels; world landmarks are turned back by the ROI's angle.
   (MediaPipe's second pass, on the ROI the auxiliary points give, was measured no better
   on ../shared/realdata from box ROIs, 0.047 vs 0.042 of the box height, so there is none.)

Everything takes and returns numpy arrays; shapes are given per function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from model.blazepose_files import VARIANTS, BlazePoseUnavailable, model_path
from model.blazepose_onnx import RAW_LANDMARKS, OnnxLandmarks, load_onnx, onnx_path, output_roles

NUM_LANDMARKS = 33  # MediaPipe Pose's own points; the network emits 39
DETECTOR_INPUT = 224
LANDMARK_INPUT = 256
HEATMAP_SIZE = 64
# The ROI margin BlazePose was trained with: its detection rectangle is widened by this
# factor and made square on the longer side.
DETECTION_ROI_SCALE = 1.25
BOX_ROI_SCALE = 1.25  # an app's (or data set's) box: an upright square 1.25x its longer side
DETECTION_SCORE = 0.5
NMS_IOU = 0.3
PRESENCE_THRESHOLD = 0.5
HEATMAP_KERNEL = 7
HEATMAP_MIN_CONFIDENCE = 0.5
PAD_VALUE = 0.0  # the letterbox border, in the detector's [-1, 1] input range

# --- regions of interest ------------------------------------------------------------------------


@dataclass(frozen=True)
class Roi:
    """Rotated square regions, B of them, in full-image pixels.

    center: (B, 2) x, y. size: (B,) side. angle: (B,) radians; the crop's up direction is the
    image's up turned by `angle` (clockwise positive, as in image coordinates).
    """

    center: np.ndarray
    size: np.ndarray
    angle: np.ndarray

    def __len__(self) -> int:
        return int(self.size.shape[0])

    def affine(self, out_size: int) -> np.ndarray:
        """(B, 2, 3) maps full-image pixels to the `out_size` crop's pixels."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        k = out_size / self.size
        # crop = k * R(-angle) (p - center) + out/2
        a = np.zeros((len(self), 2, 3))
        a[:, 0, 0], a[:, 0, 1] = k * c, k * s
        a[:, 1, 0], a[:, 1, 1] = -k * s, k * c
        off = out_size / 2.0
        a[:, 0, 2] = off - (a[:, 0, 0] * self.center[:, 0] + a[:, 0, 1] * self.center[:, 1])
        a[:, 1, 2] = off - (a[:, 1, 0] * self.center[:, 0] + a[:, 1, 1] * self.center[:, 1])
        return a

    def select(self, index: Sequence[int] | np.ndarray) -> Roi:
        idx = np.asarray(index, dtype=np.int64)
        return Roi(self.center[idx], self.size[idx], self.angle[idx])


def roi_from_boxes(boxes: np.ndarray, scale: float = BOX_ROI_SCALE) -> Roi:
    """Upright square ROIs around boxes (B, 4) x0, y0, x1, y1: side `scale` x the longer side."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    center = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * scale
    return Roi(center, side, np.zeros(len(boxes)))


def roi_from_points(center: np.ndarray, scale_point: np.ndarray, scale: float) -> Roi:
    """BlazePose's alignment ROI from a body centre (B, 2) and its scale point (B, 2), pixels.

    The side is twice their distance times `scale`; the angle turns the centre -> scale-point
    direction to "straight up" in the crop.
    """
    d = np.asarray(scale_point, np.float64) - np.asarray(center, np.float64)
    side = 2.0 * np.hypot(d[:, 0], d[:, 1]) * scale
    # Up in the image is -y; the angle that brings d onto it (image coordinates, y down).
    angle = np.arctan2(d[:, 0], -d[:, 1])
    angle = (angle + np.pi) % (2 * np.pi) - np.pi
    return Roi(np.asarray(center, np.float64), side, angle)


def warp(image: np.ndarray, affines: np.ndarray, out_size: int) -> np.ndarray:
    """Crops (B, out, out, 3) float32 in [0, 1] cut from image (H, W, 3) uint8 by the affines
    (B, 2, 3) full-image -> crop (bilinear, zeros outside the image)."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image))
    out = np.empty((len(affines), out_size, out_size, 3), np.float32)
    for i, a in enumerate(affines):
        full = np.vstack([a, [0.0, 0.0, 1.0]])
        inv = np.linalg.inv(full)[:2]  # PIL wants crop -> image
        # PIL samples at pixel centres the same way for both frames; a +0.5 shift keeps the
        # convention "pixel (0, 0)'s centre is at (0, 0)" used everywhere in the project.
        shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
        unshift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
        m = (shift @ np.vstack([inv, [0, 0, 1]]) @ unshift)[:2]
        crop = pil.transform((out_size, out_size), Image.Transform.AFFINE, tuple(m.reshape(-1)),
                             resample=Image.Resampling.BILINEAR)  # fmt: skip
        out[i] = np.asarray(crop, np.float32) / np.float32(255.0)
    return out


# --- the detector -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detections:
    """N detected people. boxes: (N, 4) x0, y0, x1, y1 pixels (the body's extent, from its
    ROI). scores: (N,). roi: the body ROIs the landmark network takes."""

    boxes: np.ndarray
    scores: np.ndarray
    roi: Roi


@cache
def ssd_anchors() -> np.ndarray:
    """(2254, 2) anchor centres in [0, 1] for the 224x224 detector (fixed-size anchors).

    Five layers at strides 8, 16, 32, 32, 32; each layer adds two anchors per cell (its
    aspect ratio and the interpolated scale), layers of one stride share their grid.
    """
    strides = (8, 16, 32, 32, 32)
    centres = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        per_cell = 2 * (j - i)
        n = math.ceil(DETECTOR_INPUT / strides[i])
        ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
        grid = np.stack([xs, ys], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, per_cell, axis=1).reshape(-1, 2))
        i = j
    return np.concatenate(centres)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image scaled to fit a size x size square, centred, zero padding.

    Returns (square (size, size, 3) float32 in [-1, 1], scale (2,), offset (2,)) with
    square_px = image_px * scale + offset (pixel centres at integer coordinates).
    """
    from PIL import Image

    h, w = image.shape[:2]
    fit = size / max(h, w)
    nw, nh = max(1, round(w * fit)), max(1, round(h * fit))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    out = np.full((size, size, 3), PAD_VALUE, np.float32)
    ox, oy = (size - nw) // 2, (size - nh) // 2
    out[oy : oy + nh, ox : ox + nw] = resized.astype(np.float32) / 127.5 - 1.0
    scale = np.array([nw / w, nh / h])
    # A resize maps pixel centre x to (x + 0.5) * s - 0.5.
    offset = np.array([ox, oy]) + 0.5 * scale - 0.5
    return out, scale, offset


def decode_detections(
    raw_boxes: np.ndarray, raw_scores: np.ndarray, threshold: float = DETECTION_SCORE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detector's outputs for one image -> candidates in 224-pixel letterbox coordinates.

    raw_boxes: (2254, 12) [dx, dy, w, h, 4 x (kx, ky)] in input pixels relative to the anchor.
    raw_scores: (2254,) logits. Returns boxes (N, 4) x0, y0, x1, y1; keypoints (N, 4, 2);
    scores (N,), after weighted non-maximum suppression, best first.
    """
    anchors = ssd_anchors() * DETECTOR_INPUT
    scores = _sigmoid(np.clip(raw_scores.reshape(-1), -100.0, 100.0))
    keep = scores >= threshold
    if not keep.any():
        return np.zeros((0, 4)), np.zeros((0, 4, 2)), np.zeros(0)
    raw, anc, scores = raw_boxes[keep].astype(np.float64), anchors[keep], scores[keep]
    cxy = raw[:, :2] + anc
    half = raw[:, 2:4] / 2.0
    boxes = np.concatenate([cxy - half, cxy + half], axis=1)
    keypoints = raw[:, 4:12].reshape(-1, 4, 2) + anc[:, None, :]
    return _weighted_nms(boxes, keypoints, scores)


def _weighted_nms(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's "weighted" NMS: each kept detection is the score-weighted mean of the
    candidates that overlap it by IoU > NMS_IOU (its score stays the best one's)."""
    order = np.argsort(-scores)
    remaining = list(order)
    out_b, out_k, out_s = [], [], []
    while remaining:
        best = remaining[0]
        iou = _iou(boxes[best], boxes[remaining])
        group = [r for r, v in zip(remaining, iou, strict=True) if v > NMS_IOU]
        w = scores[group][:, None]
        out_b.append((boxes[group] * w).sum(0) / w.sum())
        out_k.append((keypoints[group] * w[:, :, None]).sum(0) / w.sum())
        out_s.append(scores[best])
        taken = set(group)
        remaining = [r for r in remaining if r not in taken]
    return np.array(out_b), np.array(out_k), np.array(out_s)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with boxes (N, 4), x0, y0, x1, y1."""
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0.0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


# --- landmarks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Landmarks:
    """BlazePose's outputs for B ROIs.

    image: (B, 33, 3) x, y in full-image pixels and z (same scale as x, relative to the hips).
    visibility, presence: (B, 33) in [0, 1]. world: (B, 33, 3) metres, hip-centred, in the
    camera's orientation (x right, y down, z away from the camera). score: (B,) pose
    presence. roi: the ROIs the network read.
    """

    image: np.ndarray
    visibility: np.ndarray
    presence: np.ndarray
    world: np.ndarray
    score: np.ndarray
    roi: Roi

    def select(self, index: Sequence[int] | np.ndarray) -> Landmarks:
        idx = np.asarray(index, dtype=np.int64)
        return Landmarks(
            self.image[idx], self.visibility[idx], self.presence[idx],
            self.world[idx], self.score[idx], self.roi.select(idx),
        )  # fmt: skip

    def keypoints(self) -> np.ndarray:
        """(B, 33, 3) [x, y, confidence] full-image pixels, MediaPipe-33 order; confidence is
        visibility x presence (the chance the point is in view and not occluded)."""
        conf = self.visibility * self.presence
        return np.concatenate([self.image[..., :2], conf[..., None]], axis=-1).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))  # no overflow for big |x|


def refine_on_heatmap(xy: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """Landmark positions (39, 2) in [0, 1] crop units, refined as the confidence-weighted
    centre of a 7x7 window of their heatmap (64, 64, 39) when the window is confident."""
    out = xy.copy()
    conf = _sigmoid(heatmap)
    r = HEATMAP_KERNEL // 2
    for k in range(xy.shape[0]):
        cx = int(xy[k, 0] * HEATMAP_SIZE)
        cy = int(xy[k, 1] * HEATMAP_SIZE)
        x0, x1 = max(0, cx - r), min(HEATMAP_SIZE, cx + r + 1)
        y0, y1 = max(0, cy - r), min(HEATMAP_SIZE, cy + r + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        win = conf[y0:y1, x0:x1, k]
        if win.max() < HEATMAP_MIN_CONFIDENCE:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1]
        total = win.sum()
        out[k, 0] = ((xs + 0.5) * win).sum() / total / HEATMAP_SIZE
        out[k, 1] = ((ys + 0.5) * win).sum() / total / HEATMAP_SIZE
    return out


class BlazePose:
    """The detector and one landmark variant, loaded once (per worker process).

    variant: "lite" | "full" | "heavy". threads: CPU threads. directory: where the .tflite
    files are (see `model_path`). landmark_runtime: "litert" (the .tflite file) or "onnx" (the
    shipped ONNX conversion, `model.blazepose_onnx`, in ONNX Runtime on `provider`: "cpu" or
    "cuda"); the detector always runs in LiteRT.
    """

    def __init__(
        self,
        variant: str = "full",
        threads: int = 1,
        directory: str | Path | None = None,
        landmark_runtime: str = "litert",
        provider: str = "cpu",
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown BlazePose variant {variant!r}; valid: {', '.join(VARIANTS)}")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ModuleNotFoundError as exc:
            raise BlazePoseUnavailable(
                "BlazePose runs in LiteRT: install the worker extra (`make install`), which "
                "brings ai-edge-litert"
            ) from exc
        self.variant = variant
        self.files = {"detector": model_path("detector", directory), variant: model_path(variant, directory)}
        self._detector = Interpreter(model_path=str(self.files["detector"]), num_threads=threads)
        self._detector.allocate_tensors()
        if landmark_runtime == "onnx":
            self.files[variant] = onnx_path(variant)
            onnx = load_onnx(self.files[variant])
            self._run_landmarks: Any = OnnxLandmarks(onnx, provider, threads)
        elif landmark_runtime == "litert":
            self._run_landmarks = _LiteRTLandmarks(Interpreter, self.files[variant], threads)
        else:
            raise ValueError(f"unknown landmark runtime {landmark_runtime!r}; valid: litert, onnx")
        # What runs the landmark network, for logs: ONNX Runtime's providers, or LiteRT.
        self.landmark_backend: str = self._run_landmarks.backend

    # -- people --------------------------------------------------------------------------------

    def detect_people(self, image: np.ndarray, threshold: float = DETECTION_SCORE) -> Detections:
        """People in image (H, W, 3) uint8 RGB, best first."""
        square, scale, offset = letterbox(image, DETECTOR_INPUT)
        det = self._detector
        det.set_tensor(det.get_input_details()[0]["index"], square[None])
        det.invoke()
        outs = {tuple(d["shape"][1:]): det.get_tensor(d["index"]) for d in det.get_output_details()}
        boxes, kps, scores = decode_detections(outs[(2254, 12)][0], outs[(2254, 1)][0], threshold)
        if len(scores) == 0:
            empty = Roi(np.zeros((0, 2)), np.zeros(0), np.zeros(0))
            return Detections(np.zeros((0, 4)), np.zeros(0), empty)
        kps = (kps - offset) / scale  # back to full-image pixels
        roi = roi_from_points(kps[:, 0], kps[:, 1], DETECTION_ROI_SCALE)
        return Detections(_roi_boxes(roi, image.shape[:2]), scores, roi)

    # -- landmarks -----------------------------------------------------------------------------

    def landmarks(self, image: np.ndarray, roi: Roi) -> Landmarks:
        """Landmarks of the people in `roi` (B ROIs) of image (H, W, 3) uint8 RGB."""
        crops = warp(image, roi.affine(LANDMARK_INPUT), LANDMARK_INPUT)
        b = len(roi)
        raw = np.zeros((b, RAW_LANDMARKS, 5))
        world = np.zeros((b, RAW_LANDMARKS, 3))
        score = np.zeros(b)
        for i in range(b):  # the graph has a fixed batch of one
            got = self._run_landmarks(crops[i : i + 1])
            r = got["landmarks"].reshape(RAW_LANDMARKS, 5).astype(np.float64)
            r[:, :3] /= LANDMARK_INPUT
            r[:, :2] = refine_on_heatmap(r[:, :2], got["heatmap"])
            raw[i] = r
            world[i] = got["world"].reshape(RAW_LANDMARKS, 3)
            score[i] = float(got["score"].reshape(-1)[0])
        return _to_landmarks(raw, world, score, roi)

    def find_people(self, image: np.ndarray, max_people: int) -> Landmarks:
        """Everyone the detector finds in image (H, W, 3), best first (at most `max_people`),
        with their landmarks; people whose pose presence is below PRESENCE_THRESHOLD are
        dropped. Box them with `landmark_boxes`."""
        found = self.detect_people(image)
        lm = self.landmarks(image, found.roi.select(range(min(len(found.roi), max_people))))
        return lm.select(np.flatnonzero(lm.score >= PRESENCE_THRESHOLD))


class _LiteRTLandmarks:
    """The landmark network in a LiteRT interpreter: one (1, 256, 256, 3) crop in, its
    outputs by role (`_outputs_by_shape`) without the batch dimension out."""

    backend = "LiteRT"

    def __init__(self, interpreter: Any, path: Path, threads: int) -> None:
        self.interp = interpreter(model_path=str(path), num_threads=threads)
        self.interp.allocate_tensors()
        self.outputs = _outputs_by_shape(self.interp)
        self.input = self.interp.get_input_details()[0]["index"]

    def __call__(self, crop: np.ndarray) -> dict[str, np.ndarray]:
        self.interp.set_tensor(self.input, crop)
        self.interp.invoke()
        return {k: self.interp.get_tensor(idx)[0] for k, idx in self.outputs.items()}


def _outputs_by_shape(interp: object) -> dict[str, int]:
    """The landmark network's output tensor indices by role (`output_roles`)."""
    details = interp.get_output_details()  # type: ignore[attr-defined]
    roles = output_roles({d["name"]: tuple(int(v) for v in d["shape"][1:]) for d in details})
    index = {d["name"]: d["index"] for d in details}
    return {role: index[name] for role, name in roles.items()}


def _crop_to_image(points: np.ndarray, roi: Roi) -> np.ndarray:
    """Points (B, K, 2) in [0, 1] crop units -> full-image pixels."""
    rel = (points - 0.5) * roi.size[:, None, None]
    c, s = np.cos(roi.angle)[:, None], np.sin(roi.angle)[:, None]
    x = c * rel[..., 0] - s * rel[..., 1]
    y = s * rel[..., 0] + c * rel[..., 1]
    return np.stack([x, y], axis=-1) + roi.center[:, None, :]


def _to_landmarks(raw: np.ndarray, world: np.ndarray, score: np.ndarray, roi: Roi) -> Landmarks:
    n = NUM_LANDMARKS
    xy = _crop_to_image(raw[:, :n, :2], roi)
    z = raw[:, :n, 2:3] * roi.size[:, None, None]
    # World landmarks come in the ROI's frame: turn x, y back by the ROI's angle.
    c, s = np.cos(roi.angle)[:, None], np.sin(roi.angle)[:, None]
    w = world[:, :n]
    wx = c * w[..., 0] - s * w[..., 1]
    wy = s * w[..., 0] + c * w[..., 1]
    return Landmarks(
        image=np.concatenate([xy, z], axis=-1),
        visibility=_sigmoid(raw[:, :n, 3]),
        presence=_sigmoid(raw[:, :n, 4]),
        world=np.stack([wx, wy, w[..., 2]], axis=-1),
        score=score,
        roi=roi,
    )


def _roi_boxes(roi: Roi, image_hw: tuple[int, int]) -> np.ndarray:
    """Axis-aligned boxes (B, 4) of the body each ROI frames: the ROI's extent shrunk by its
    margin, clipped to the image."""
    half = roi.size[:, None] / (2.0 * DETECTION_ROI_SCALE)
    boxes = np.concatenate([roi.center - half, roi.center + half], axis=1)
    h, w = image_hw
    return np.clip(boxes, 0.0, [w, h, w, h])


# --- what the regressor's head reads ---------------------------------------------------------

# The head's input, per person: the 33 landmarks in the CLIFF box's normalised coordinates
# (x, y as `model.geometry.pixels_to_box`, z on the same scale), their visibility and
# presence, the 33 world landmarks (metres, camera-oriented) and the pose presence score.
FEATURE_DIM = NUM_LANDMARKS * (3 + 2 + 3) + 1
# BlazePose's ROI for a CLIFF box: the CLIFF box (1.2x the person's longer side) widened to
# the 1.25x BlazePose reads best, so training (boxes from labels) and serving (boxes from an
# app or the detector) crop the same way.
ROI_PER_CLIFF_BOX = BOX_ROI_SCALE / 1.2


def roi_from_cliff_boxes(center: np.ndarray, box_size: np.ndarray) -> Roi:
    """Upright ROIs for CLIFF boxes: center (B, 2) pixels, box_size (B,) pixels."""
    center = np.asarray(center, np.float64).reshape(-1, 2)
    size = np.asarray(box_size, np.float64).reshape(-1) * ROI_PER_CLIFF_BOX
    return Roi(center, size, np.zeros(len(size)))


def head_features(lm: Landmarks, center: np.ndarray, box_size: np.ndarray) -> np.ndarray:
    """(B, FEATURE_DIM) float32 head input from landmarks and the CLIFF boxes they belong to
    (center (B, 2) pixels, box_size (B,) pixels); independent of the ROI BlazePose read."""
    center = np.asarray(center, np.float64).reshape(-1, 1, 2)
    half = np.asarray(box_size, np.float64).reshape(-1, 1, 1) / 2.0
    xy = (lm.image[..., :2] - center) / half
    z = lm.image[..., 2:3] / half
    b = len(lm.score)
    parts = [
        xy.reshape(b, -1), z.reshape(b, -1), lm.visibility, lm.presence,
        lm.world.reshape(b, -1), lm.score.reshape(b, 1),
    ]  # fmt: skip
    return np.concatenate(parts, axis=1).astype(np.float32)


def coco17_keypoints(lm: Landmarks) -> np.ndarray:
    """(B, 17, 3) COCO-17 [x, y, conf] full-image pixels from the landmarks (people whose
    pose presence is below PRESENCE_THRESHOLD get confidence 0 everywhere)."""
    from model.keypoints import convert_keypoints

    points = np.asarray(convert_keypoints(lm.keypoints(), "mediapipe33", "coco17"), np.float32)
    points[lm.score < PRESENCE_THRESHOLD, :, 2] = 0.0
    return points


def concat_landmarks(parts: Sequence[Landmarks]) -> Landmarks:
    """Landmarks of several batches as one, in order."""
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    roi = Roi(*(np.concatenate([getattr(p.roi, n) for p in parts]) for n in ("center", "size", "angle")))
    return Landmarks(cat("image"), cat("visibility"), cat("presence"), cat("world"), cat("score"),
                     roi)  # fmt: skip


# The landmarks stop at the ankles' heels and the face; the body reaches a little beyond.
LANDMARK_BOX_PAD = (0.08, 0.18, 0.08, 0.04)  # left, top (head), right, bottom, x extent


def landmark_boxes(lm: Landmarks, image_hw: tuple[int, int]) -> np.ndarray:
    """(B, 4) x0, y0, x1, y1 boxes around each person's 33 landmarks, padded (the top most,
    for the head above the eyes), clipped to the image (H, W)."""
    xy = lm.image[..., :2]
    lo, hi = xy.min(axis=1), xy.max(axis=1)
    extent = np.maximum(hi - lo, 1.0).max(axis=1, keepdims=True)
    pad = extent * np.asarray(LANDMARK_BOX_PAD)[None]
    boxes = np.concatenate([lo - pad[:, :2], hi + pad[:, 2:]], axis=1)
    h, w = image_hw
    return np.clip(boxes, 0.0, [w, h, w, h])
