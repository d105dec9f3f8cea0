"""Temporal smoothing of a track's per-frame fits: a windowed optimisation and a One-Euro filter.

Per-frame fits jitter: each frame's TTO sees only its own noisy 2D keypoints, and depth is
barely constrained by them. `refine_track` re-fits a track's frames together, window by
window, on

- **data**: the confidence-weighted 2D keypoint error of each frame (pixels over the box
  height, so near and far people weigh alike);
- **prior**: staying near the per-frame fit (rotation matrices and translation), which
  keeps what the meta-learned per-frame optimisation found where the video gives no
  reason to move;
- **temporal**: the squared velocity and acceleration of the camera-frame 3D joints across
  neighbouring frames (metres per frame, per frame²).

with one shape (betas) per track. Windows overlap and are cross-faded, so a long track
costs window-sized problems. `OneEuroFilter` (Casiez et al., CHI 2012) is the cheap
alternative or add-on: a per-value low-pass filter whose cut-off rises with speed (little
lag on fast moves, strong smoothing when still), applied to 6D rotations and translations.

Tensors in, tensors out; the device follows the inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from model.body import BodyModel
from model.geometry import perspective_projection, rot6d_to_rotmat, rotmat_to_rot6d
from model.outputs import SMPLParams


@dataclass(frozen=True)
class TemporalConfig:
    """The windowed optimisation. window/overlap: frames; steps: Adam steps per window.
    Weights: keypoint (2D data), pose_prior / trans_prior (stay near the per-frame fit),
    velocity / acceleration (on camera-frame joints in metres)."""

    # Defaults chosen on validation clips (`metahmr eval --motion --seed 1 --out-dir DIR`;
    # the reported split is seed 0): with Adam the step count sets how far the smoothing
    # goes more than the weights do, and a velocity term only added lag.
    steps: int = 60
    lr: float = 0.01
    window: int = 64
    overlap: int = 16
    keypoint_weight: float = 1.0
    pose_prior_weight: float = 0.5
    trans_prior_weight: float = 0.05
    velocity_weight: float = 0.0
    acceleration_weight: float = 10.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.window < 3 or not 0 <= self.overlap < self.window:
            raise ValueError(
                f"need steps >= 0, window >= 3 and 0 <= overlap < window (got steps={self.steps}, "
                f"window={self.window}, overlap={self.overlap})"
            )


@dataclass(frozen=True)
class TrackParams:
    """A track's SMPL over T frames, camera frame. rotmats: (T, 24, 3, 3); betas: (T, 10)
    (per frame, or the same row repeated); trans: (T, 3) metres."""

    rotmats: Tensor
    betas: Tensor
    trans: Tensor

    @property
    def num_frames(self) -> int:
        return int(self.rotmats.shape[0])

    def smpl(self) -> SMPLParams:
        return SMPLParams(self.rotmats[:, :1], self.rotmats[:, 1:], self.betas)


def acceleration(points: Tensor) -> Tensor:
    """Second differences along time. points: (T, ...). Returns (T - 2, ...)."""
    return points[2:] - 2 * points[1:-1] + points[:-2]


def windows(length: int, window: int, overlap: int) -> list[slice]:
    """Overlapping windows covering range(length); the last one ends at `length`."""
    if length <= window:
        return [slice(0, length)]
    stride = window - overlap
    starts = list(range(0, length - window, stride)) + [length - window]
    return [slice(s, s + window) for s in starts]


def _fade(window: slice, overlap: int, first: bool, last: bool) -> Tensor:
    """Cross-fade weights (n,) of one window: ramps over the overlaps, 1 elsewhere."""
    n = window.stop - window.start
    w = torch.ones(n)
    ramp = torch.linspace(0.0, 1.0, overlap + 2)[1:-1] if overlap else torch.ones(0)
    if not first and overlap:
        w[:overlap] = ramp
    if not last and overlap:
        w[n - overlap:] = ramp.flip(0)
    return w


def refine_track(
    body: BodyModel,
    initial: TrackParams,
    keypoints: Tensor,
    focal_length: float,
    camera_center: Tensor,
    config: TemporalConfig | None = None,
) -> TrackParams:
    """The windowed temporal fit of one track (see the module docstring).

    keypoints: (T, 17, 3) COCO-17 pixels + confidence the per-frame fits used.
    camera_center: (2,) principal point in pixels. Returns the refined `TrackParams`, one
    shape (the mean of the per-frame betas) repeated over the frames.
    """
    cfg = config or TemporalConfig()
    t = initial.num_frames
    if keypoints.shape != (t, 17, 3):
        raise ValueError(f"keypoints must be ({t}, 17, 3), got {tuple(keypoints.shape)}")
    betas = initial.betas.mean(0, keepdim=True).expand(t, -1)
    if t < 3 or cfg.steps == 0:
        return TrackParams(initial.rotmats, betas, initial.trans)
    spans = windows(t, cfg.window, cfg.overlap)
    rot6d = torch.zeros(t, 24, 6, dtype=initial.rotmats.dtype, device=initial.rotmats.device)
    trans = torch.zeros_like(initial.trans)
    weight = torch.zeros(t, dtype=trans.dtype, device=trans.device)
    for i, span in enumerate(spans):
        part = TrackParams(initial.rotmats[span], betas[span], initial.trans[span])
        r6, tr = fit_window(body, part, keypoints[span], focal_length, camera_center, cfg)
        w = _fade(span, min(cfg.overlap, span.stop - span.start), i == 0, i == len(spans) - 1)
        w = w.to(trans)
        rot6d[span] += w[:, None, None] * r6
        trans[span] += w[:, None] * tr
        weight[span] += w
    rot6d = rot6d / weight[:, None, None]
    return TrackParams(rot6d_to_rotmat(rot6d), betas, trans / weight[:, None])


def fit_window(
    body: BodyModel,
    initial: TrackParams,
    keypoints: Tensor,
    focal_length: float,
    camera_center: Tensor,
    cfg: TemporalConfig,
) -> tuple[Tensor, Tensor]:
    """Adam on one window's rotations (6D) and translations, shape fixed.
    Returns (rot6d (n, 24, 6), trans (n, 3))."""
    n = initial.num_frames
    rot6d0 = rotmat_to_rot6d(initial.rotmats).detach()
    rot0 = rot6d_to_rotmat(rot6d0)  # the prior's target, once per window, not per step
    trans0 = initial.trans.detach()
    rot6d = rot6d0.clone().requires_grad_(True)
    trans = trans0.clone().requires_grad_(True)
    focal = torch.full((n,), float(focal_length), dtype=trans0.dtype, device=trans0.device)
    center = camera_center.to(trans0).expand(n, 2)
    # Pixels over the person's height: the 2D error means the same at any distance.
    seen = keypoints[..., 2] > 0
    ys = torch.where(seen, keypoints[..., 1], torch.nan)
    height = (ys.nan_to_num(-1e9).amax(1) - ys.nan_to_num(1e9).amin(1)).clamp(min=20.0)
    height = torch.where(seen.sum(1) >= 2, height, torch.full_like(height, 200.0))
    optim = torch.optim.Adam([rot6d, trans], lr=cfg.lr)
    for _ in range(cfg.steps):
        optim.zero_grad()
        loss = window_loss(body, rot6d, trans, rot0, trans0, initial.betas, keypoints,
                           height, focal, center, cfg)  # fmt: skip
        loss.backward()
        optim.step()
    return rot6d.detach(), trans.detach()


def window_loss(
    body: BodyModel,
    rot6d: Tensor,
    trans: Tensor,
    rot0: Tensor,
    trans0: Tensor,
    betas: Tensor,
    keypoints: Tensor,
    height: Tensor,
    focal: Tensor,
    center: Tensor,
    cfg: TemporalConfig,
) -> Tensor:
    """The objective of one window: data + prior + temporal terms (module docstring).
    rot6d: (n, 24, 6); trans: (n, 3); keypoints: (n, 17, 3); height: (n,) pixels."""
    rot = rot6d_to_rotmat(rot6d)
    out = body.keypoints_only(SMPLParams(rot[:, :1], rot[:, 1:], betas))
    px = perspective_projection(out.coco17, trans, focal, center)
    err = ((px - keypoints[..., :2]) / height[:, None, None]) ** 2
    data = (keypoints[..., 2:] * err).sum(-1).mean()
    prior = cfg.pose_prior_weight * ((rot - rot0) ** 2).sum((-1, -2)).mean()
    prior = prior + cfg.trans_prior_weight * ((trans - trans0) ** 2).sum(-1).mean()
    joints = out.joints + trans[:, None]
    velocity = (joints[1:] - joints[:-1]).pow(2).sum(-1).mean()
    accel = acceleration(joints).pow(2).sum(-1).mean()
    temporal = cfg.velocity_weight * velocity + cfg.acceleration_weight * accel
    return cfg.keypoint_weight * data + prior + temporal


# --- One-Euro output filter ----------------------------------------------------------------


@dataclass(frozen=True)
class OneEuroConfig:
    """min_cutoff: Hz at rest (lower: smoother); beta: how fast the cut-off rises with speed
    (higher: less lag); d_cutoff: Hz of the speed estimate."""

    min_cutoff: float = 1.0
    beta: float = 2.0  # on the validation clips (as above) 0.5 lagged behind; 2.0 less
    d_cutoff: float = 1.0

    def __post_init__(self) -> None:
        if self.min_cutoff <= 0 or self.beta < 0 or self.d_cutoff <= 0:
            raise ValueError("One-Euro needs min_cutoff > 0, beta >= 0, d_cutoff > 0")


def _alpha(cutoff: np.ndarray | float, rate: float) -> np.ndarray:
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff))
    return np.asarray(1.0 / (1.0 + tau * rate))


def one_euro(values: np.ndarray, fps: float, config: OneEuroConfig | None = None) -> np.ndarray:
    """Filter a signal (T, ...) sampled at `fps`, each value on its own. Returns (T, ...)."""
    cfg = config or OneEuroConfig()
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    if len(x) == 0:
        return out
    out[0] = x[0]
    dx = np.zeros_like(x[0])
    a_d = _alpha(cfg.d_cutoff, fps)
    for i in range(1, len(x)):
        raw_dx = (x[i] - out[i - 1]) * fps
        dx = a_d * raw_dx + (1.0 - a_d) * dx
        a = _alpha(cfg.min_cutoff + cfg.beta * np.abs(dx), fps)
        out[i] = a * x[i] + (1.0 - a) * out[i - 1]
    return out


def filter_track(params: TrackParams, fps: float, config: OneEuroConfig | None = None) -> TrackParams:
    """One-Euro on a track's rotations (as 6D, re-orthonormalised) and translations."""
    r6 = rotmat_to_rot6d(params.rotmats).detach().cpu().numpy()
    tr = params.trans.detach().cpu().numpy()
    r6f = torch.from_numpy(one_euro(r6, fps, config)).to(params.rotmats)
    trf = torch.from_numpy(one_euro(tr, fps, config)).to(params.trans)
    return TrackParams(rot6d_to_rotmat(r6f), params.betas, trf)
