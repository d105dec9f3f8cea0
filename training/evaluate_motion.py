"""The motion split (ARCHITECTURE §6 for video): independent per-frame fits against the
temporally smoothed track, on synthetic motion clips with ground truth per frame.

Clips come from `training.synth.motion` (fixed seeds; half with a static camera, half with a
moving one; one person walking and gesturing along a smooth path). Per frame, as the worker
does for a person it was given a box for: the ground-truth box of the visible body, BlazePose's
landmarks in it (COCO-17 keypoints and the head's input), f_w's head and the checkpoint's TTO:
the **independent** fit. Then, per clip, `model.temporal`: the windowed temporal fit
(**smoothed**), the One-Euro filter alone (**one-euro**), and both.

Metrics per variant over all frames: MPJPE and PA-MPJPE (mm, `training.metrics`) and the
acceleration error (mm/frame²): the mean distance between the predicted and true second
differences of the pelvis-aligned joints, as HMMR/VIBE report it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.body import BodyModel
from model.outputs import CropInfo
from model.temporal import (
    OneEuroConfig,
    TemporalConfig,
    TrackParams,
    acceleration,
    filter_track,
    refine_track,
)
from training.metrics import mpjpe, pa_mpjpe

log = logging.getLogger(__name__)

VARIANTS = ("independent", "one-euro", "smoothed", "smoothed+one-euro")
SECTION = "Motion (video)"


@dataclass(frozen=True)
class MotionEvalConfig:
    """checkpoint: a BlazePose-head model (the shipped one by default); clips: how many
    (half static camera, half moving); frames, fps, image_hw: each clip's."""

    checkpoint: str = "model/assets/default/model.pt"
    clips: int = 4
    frames: int = 90
    fps: float = 30.0
    image_hw: tuple[int, int] = (480, 640)
    seed: int = 0
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    one_euro: OneEuroConfig = field(default_factory=OneEuroConfig)


def accel_error(pred: Tensor, target: Tensor) -> Tensor:
    """Acceleration error (mm/frame²) of pelvis-aligned joints, per middle frame.
    pred, target: (T, J, 3) metres. Returns (T - 2,)."""
    rel = lambda j: j - j[:, :1]  # noqa: E731
    diff = acceleration(rel(pred)) - acceleration(rel(target))
    return torch.linalg.vector_norm(diff, dim=-1).mean(-1) * 1000.0


class FramePredictor:
    """Per-frame fits of one checkpoint: BlazePose landmarks in a given box -> head -> TTO."""

    def __init__(self, checkpoint: str, body: BodyModel) -> None:
        from model.blazepose import BlazePose
        from model.checkpoint import load_checkpoint

        self.ckpt = load_checkpoint(checkpoint)
        self.f_w = self.ckpt.build_f_w(torch.device("cpu")).eval()
        self.f_u = self.ckpt.build_f_u(torch.device("cpu"))
        self.body = body
        name = self.f_w.config.backbone.name
        self.bp = BlazePose(name.split("-", 1)[1] if name.startswith("blazepose-") else "full",
                            threads=torch.get_num_threads())  # fmt: skip

    def fit(self, image: np.ndarray, box: np.ndarray, focal: float) -> tuple[TrackParams, np.ndarray]:
        """One person's fit in `image` (H, W, 3) from its box (4,) x0, y0, x1, y1.
        Returns the fit (one frame) and the COCO-17 keypoints it used (17, 3)."""
        from model.blazepose import coco17_keypoints, head_features, roi_from_cliff_boxes
        from model.crop import box_from_xyxy
        from model.tto import TTOInputs, fit

        crop_hw = self.f_w.config.crop_hw
        center, size = box_from_xyxy(box[None].astype(np.float64), out_hw=crop_hw)
        h, w = image.shape[:2]
        crop = CropInfo.from_boxes(
            torch.as_tensor(center, dtype=torch.float32), torch.as_tensor(size, dtype=torch.float32),
            torch.tensor([[h, w]], dtype=torch.float32), torch.tensor([focal], dtype=torch.float32),
            crop_hw=crop_hw,
        )  # fmt: skip
        lm = self.bp.landmarks(image, roi_from_cliff_boxes(center, size))
        kp = coco17_keypoints(lm)
        feats_in = torch.from_numpy(head_features(lm, center, size))
        with torch.no_grad():
            feats = self.f_w.backbone(feats_in)
            aux = self.f_u(feats_in, crop.bbox_info()) if self.f_u is not None else None
        inputs = TTOInputs(torch.from_numpy(kp).float(), crop, "coco17", images=feats_in, features=feats)
        config = replace(self.ckpt.tto, early_stop=0.0, use_aux=aux is not None)
        pred = fit(self.f_w, inputs, self.body, config, aux=aux).final.detach()
        params = TrackParams(pred.params.rotmats(), pred.params.betas, pred.translation(crop))
        return params, kp[0]


def _cat(parts: list[TrackParams]) -> TrackParams:
    return TrackParams(*(torch.cat([getattr(p, k) for p in parts]) for k in ("rotmats", "betas", "trans")))


def _joints(body: BodyModel, p: TrackParams) -> Tensor:
    with torch.no_grad():
        return body.keypoints_only(p.smpl()).joints + p.trans[:, None]


def evaluate_motion(config: MotionEvalConfig, body: BodyModel | None = None) -> dict[str, Any]:
    """Every variant's errors over the clips (module docstring); the results.json payload."""
    from model.body import load_body_model
    from model.render import Renderer
    from training.synth.motion import CameraMotion, MotionConfig, make_clip

    body = body if body is not None else load_body_model()
    predictor = FramePredictor(config.checkpoint, body)
    errors: dict[str, dict[str, list[Tensor]]] = {v: {"mpjpe": [], "pa_mpjpe": [], "accel": []} for v in VARIANTS}
    seconds = {"independent": 0.0, "smoothed": 0.0, "one-euro": 0.0}
    hw = config.image_hw
    with Renderer(hw[1], hw[0]) as renderer:
        for index in range(config.clips):
            camera: CameraMotion = "static" if index % 2 == 0 else "moving"
            clip = make_clip(MotionConfig(frames=config.frames, fps=config.fps, image_hw=hw, camera=camera),
                             seed=config.seed, index=index, body=body, renderer=renderer)  # fmt: skip
            person = clip.people[0]
            start = time.perf_counter()
            fits = [predictor.fit(clip.frames[t], person.bbox[t], clip.focal) for t in range(config.frames)]
            seconds["independent"] += time.perf_counter() - start
            independent = _cat([f for f, _ in fits])
            keypoints = torch.from_numpy(np.stack([k for _, k in fits])).float()
            center = torch.tensor([hw[1] / 2.0, hw[0] / 2.0])
            start = time.perf_counter()
            smoothed = refine_track(body, independent, keypoints, clip.focal, center, config.temporal)
            seconds["smoothed"] += time.perf_counter() - start
            start = time.perf_counter()
            euro = filter_track(independent, config.fps, config.one_euro)
            seconds["one-euro"] += time.perf_counter() - start
            variants = {"independent": independent, "one-euro": euro, "smoothed": smoothed,
                        "smoothed+one-euro": filter_track(smoothed, config.fps, config.one_euro)}  # fmt: skip
            truth = torch.from_numpy(person.joints).float()
            for name, params in variants.items():
                pred = _joints(body, params)
                errors[name]["mpjpe"].append(mpjpe(pred, truth))
                errors[name]["pa_mpjpe"].append(pa_mpjpe(pred, truth))
                errors[name]["accel"].append(accel_error(pred, truth))
            log.info("motion clip %d (%s camera): accel %.1f -> %.1f mm/frame^2", index, camera,
                     float(errors["independent"]["accel"][-1].mean()), float(errors["smoothed"]["accel"][-1].mean()))  # fmt: skip
    frames = config.clips * config.frames
    rows = {name: {k: round(float(torch.cat(v).mean()), 2) for k, v in errs.items()} for name, errs in errors.items()}
    base = rows["independent"]
    for row in rows.values():
        row["accel_change"] = round(row["accel"] / base["accel"] - 1.0, 4)
        row["pa_mpjpe_change"] = round(row["pa_mpjpe"] / base["pa_mpjpe"] - 1.0, 4)
    return {
        "checkpoint": config.checkpoint, "clips": config.clips, "frames_per_clip": config.frames,
        "fps": config.fps, "image_hw": list(config.image_hw), "seed": config.seed,
        "temporal": asdict(config.temporal), "one_euro": asdict(config.one_euro),
        "ms_per_frame": {k: round(1000 * v / frames, 2) for k, v in seconds.items()},
        "variants": rows,
    }  # fmt: skip


def markdown_section(payload: dict[str, Any]) -> str:
    """The results.md section of a motion payload."""
    rows = payload["variants"]
    ms = payload["ms_per_frame"]
    t = payload["temporal"]
    lines = [
        f"{payload['clips']} synthetic clips of {payload['frames_per_clip']} frames at "
        f"{payload['fps']:g} fps, {payload['image_hw'][1]}x{payload['image_hw'][0]} (half with a "
        "moving camera), seed "
        f"{payload['seed']}; per frame the ground-truth box, BlazePose keypoints and "
        f"`{payload['checkpoint']}`'s TTO (independent); then `model.temporal` per clip: the "
        f"windowed fit ({t['steps']} steps, window {t['window']}, velocity weight "
        f"{t['velocity_weight']:g}, acceleration weight {t['acceleration_weight']:g}) and/or the "
        "One-Euro filter. Acceleration error: mm/frame² of pelvis-aligned joints.",
        "",
        "| variant | MPJPE (mm) | PA-MPJPE (mm) | accel error (mm/frame²) | accel vs independent "
        "| PA-MPJPE vs independent |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['mpjpe']:.1f} | {r['pa_mpjpe']:.1f} | {r['accel']:.1f} | "
                     f"{100 * r['accel_change']:+.0f}% | {100 * r['pa_mpjpe_change']:+.1f}% |")  # fmt: skip
    lines += [
        "",
        f"Time per frame on this machine: per-frame fit {ms['independent']:.0f} ms, temporal fit "
        f"{ms['smoothed']:.1f} ms, One-Euro {ms['one-euro']:.2f} ms.",
    ]
    return "\n".join(lines)
